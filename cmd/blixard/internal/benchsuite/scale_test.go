package benchsuite

import (
	"context"
	"testing"
	"time"
)

func TestSpawnVMActors(t *testing.T) {
	r, err := SpawnVMActors(context.Background(), 300, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if r.SpawnToRunning <= 0 || r.RSSPerVM == 0 {
		t.Fatalf("implausible measurement %+v", r)
	}
	t.Logf("%+v", r)
}
