package systemd_test

import (
	"context"
	"log/slog"

	"github.com/blixard/blixard/microvm/qemu"
	"github.com/blixard/blixard/microvm/systemd"
)

// A node picks its supervisor once and hands it to the driver: a transient
// unit per VM where systemd is PID 1, a child process elsewhere.
func ExampleSupervisorFor() {
	log := slog.Default()
	sup, err := systemd.SupervisorFor(context.Background(), "auto", log)
	if err != nil {
		log.Error("choosing a supervisor", "err", err)
		return
	}
	d, err := qemu.New(qemu.Options{Dir: "/var/lib/blixard/vms", Supervisor: sup, Logger: log})
	if err != nil {
		log.Error("qemu driver", "err", err)
		return
	}
	defer d.Close()
}
