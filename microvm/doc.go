// Package microvm provides the value types shared by blixard's microVM
// drivers and the node agent: Spec (what to run), Instance (what runs) and
// Exit (how it ended), plus the sentinel errors drivers return.
//
// The driver implementations live in sub-packages (fake, qemu, nix); the
// Driver interface they satisfy is declared by its consumer, package
// actors. Who may import microvm: actors/, sim/, cmd/ and the driver
// packages. It imports nothing from blixard; conversion from the proto
// records happens in actors.
//
// Values are plain data: copy them freely. A driver keys everything by
// Spec.Name, which is unique per cluster (a DNS label).
package microvm
