package benchsuite

import (
	"context"
	"testing"
	"time"
)

// The Go benchmarks of the scale suite's measurements, for profiling with
// the usual tools (-cpuprofile, -memprofile):
//
//	go test ./cmd/blixard/internal/benchsuite/ -run '^$' -bench . -benchtime 1x

// BenchmarkTenThousandVMs places 10,000 VMs on one node (fake driver, in
// memory) and measures the time from spawning the supervisor until every
// VM's RUNNING status is committed, and the memory each VM costs.
func BenchmarkTenThousandVMs(b *testing.B) {
	for i := 0; i < b.N; i++ {
		r, err := SpawnVMActors(context.Background(), 10000, 2*time.Minute)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(r.SpawnToRunning.Seconds(), "s-to-all-running")
		b.ReportMetric(r.RSSPerVM, "rss-B/vm")
		b.ReportMetric(r.HeapPerVM, "heap+stack-B/vm")
	}
}

// BenchmarkStateScale builds 100,000 VMs on 1,000 nodes and measures
// placement per create, snapshot save and restore, and bytes per VM.
func BenchmarkStateScale(b *testing.B) {
	for i := 0; i < b.N; i++ {
		r, err := MeasureState(1000, 100000, 10000)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportMetric(us(r.PlacementPerVM), "µs/create")
		b.ReportMetric(r.SnapshotSave.Seconds()*1000, "save-ms")
		b.ReportMetric(r.SnapshotRestore.Seconds()*1000, "restore-ms")
		b.ReportMetric(float64(r.SnapshotBytes)/float64(r.VMs), "snapshot-B/vm")
		b.ReportMetric(r.HeapPerVM, "heap-B/vm")
	}
}
