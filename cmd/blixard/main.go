// Command blixard is the blixard node agent (`blixard run`) and the
// operator CLI (`blixard vm ...`, `blixard cluster status`, `blixard node
// ...`) that talks to any node's api actor over protoactor remote.
//
// It is the only place that wires all packages together. The user contract
// (commands, flags, JSON keys, exit codes) is DESIGN.md §7:
// exit 0 on success, 1 when the operation failed (one line "error: ..." on
// stderr), 2 on a usage error.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := Main(ctx, os.Args[1:], os.Stdout, os.Stderr, os.Getenv)
	stop()
	os.Exit(code)
}
