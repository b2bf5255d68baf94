package sim

import (
	"testing"
	"time"

	"go.uber.org/goleak"
)

// TestCheckLeaksWaitsForTimedWindDown: a goroutine that ends on a timer
// longer than goleak's own retries (as protoactor's dead-letter throttle
// does, 1 s) is not a leak; one that outlives the wind-down is.
func TestCheckLeaksWaitsForTimedWindDown(t *testing.T) {
	before := goleak.IgnoreCurrent()
	done := make(chan struct{})
	go func() { time.Sleep(1200 * time.Millisecond); close(done) }()
	if v := checkLeaks(before); !v.OK {
		t.Fatalf("a goroutine ending after 1.2 s was reported: %s", v.Detail)
	}
	<-done

	stop := make(chan struct{})
	go func() { <-stop }()
	v := checkLeaks(before)
	close(stop)
	if v.OK {
		t.Fatal("a goroutine that outlived the wind-down was not reported")
	}
}
