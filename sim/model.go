package sim

import (
	"fmt"
	"math"
	"sort"

	"github.com/anishathalye/porcupine"

	"github.com/blixard/blixard/proto/blixardpb"
)

// OpKind is a workload operation.
type OpKind uint8

const (
	OpCreate OpKind = iota
	OpStart
	OpStop
	OpDelete
	OpMigrate
	OpGet
	numOpKinds
)

var opNames = [...]string{"create", "start", "stop", "delete", "migrate", "get"}

func (k OpKind) String() string { return opNames[k] }

// opInput is the porcupine input of one operation.
type opInput struct {
	Kind    OpKind
	Name    string
	NoStart bool
}

// opOutput is its output. Unknown means the client gave up without an
// answer (every attempt timed out or found no quorum): the operation may
// or may not have taken effect.
type opOutput struct {
	Code    blixardpb.Code
	Running bool // a get's answer: desired running
	Unknown bool
}

// vmModel is the sequential model of one VM name (the history is
// partitioned by name): whether it exists and whether it is desired
// running.
type vmModel struct {
	Exists  bool
	Running bool
}

// registryModel is the porcupine model of the VM registry:
// create/start/stop/delete/migrate/get of named VMs. Typed failures of
// apply change nothing, so a failed write is checked only for the
// existence it implies (NOT_FOUND: absent; ALREADY_EXISTS: present; other
// failures of an existing-VM command: present). An operation with an
// unknown outcome never returned: its return time lies after the history,
// so the checker may linearise it where it took effect or at the end.
var registryModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byName := map[string][]porcupine.Operation{}
		for _, op := range history {
			n := op.Input.(opInput).Name
			byName[n] = append(byName[n], op)
		}
		names := make([]string, 0, len(byName))
		for n := range byName {
			names = append(names, n)
		}
		sort.Strings(names)
		out := make([][]porcupine.Operation, 0, len(names))
		for _, n := range names {
			out = append(out, byName[n])
		}
		return out
	},
	Init: func() any { return vmModel{} },
	Step: func(state, input, output any) (bool, any) {
		s, in, out := state.(vmModel), input.(opInput), output.(opOutput)
		return stepVM(s, in, out)
	},
	Equal: func(a, b any) bool { return a.(vmModel) == b.(vmModel) },
	DescribeOperation: func(input, output any) string {
		in, out := input.(opInput), output.(opOutput)
		res := out.Code.String()
		switch {
		case out.Unknown:
			res = "unknown"
		case in.Kind == OpGet && out.Code == blixardpb.Code_OK:
			res = map[bool]string{true: "running", false: "stopped"}[out.Running]
		}
		extra := ""
		if in.Kind == OpCreate && in.NoStart {
			extra = " --no-start"
		}
		return fmt.Sprintf("%s(%s%s) → %s", in.Kind, in.Name, extra, res)
	},
	DescribeState: func(state any) string {
		s := state.(vmModel)
		switch {
		case !s.Exists:
			return "absent"
		case s.Running:
			return "running"
		}
		return "stopped"
	},
}

func stepVM(s vmModel, in opInput, out opOutput) (bool, any) {
	if out.Unknown {
		// Taking effect now (the checker may also place it at the end,
		// where its effect is never observed).
		switch in.Kind {
		case OpCreate:
			if !s.Exists {
				return true, vmModel{Exists: true, Running: !in.NoStart}
			}
		case OpStart, OpStop:
			if s.Exists {
				return true, vmModel{Exists: true, Running: in.Kind == OpStart}
			}
		case OpDelete:
			return true, vmModel{}
		}
		return true, s
	}
	code := out.Code
	switch in.Kind {
	case OpCreate:
		switch code {
		case blixardpb.Code_OK:
			return !s.Exists, vmModel{Exists: true, Running: !in.NoStart}
		case blixardpb.Code_ALREADY_EXISTS:
			return s.Exists, s
		}
		// Apply checks existence first: any other failure means absent.
		return !s.Exists, s
	case OpGet:
		switch code {
		case blixardpb.Code_OK:
			return s.Exists && s.Running == out.Running, s
		case blixardpb.Code_NOT_FOUND:
			return !s.Exists, s
		}
		return false, s
	}
	// start, stop, delete, migrate of an existing VM.
	if code == blixardpb.Code_NOT_FOUND {
		return !s.Exists, s
	}
	if !s.Exists {
		return false, s
	}
	if code != blixardpb.Code_OK {
		return true, s
	}
	switch in.Kind {
	case OpStart:
		return true, vmModel{Exists: true, Running: true}
	case OpStop:
		return true, vmModel{Exists: true, Running: false}
	case OpDelete:
		return true, vmModel{}
	}
	return true, s // migrate keeps the desired state
}

// Op is one recorded operation of the history.
type Op struct {
	Client int
	In     opInput
	Out    opOutput
	// Call and Return are nanoseconds since the start of the run; Return
	// is math.MaxInt64 for an unknown outcome.
	Call, Return int64
	Node         uint64 // the node of the last attempt
	Attempts     int
}

func porcupineOps(h []Op) []porcupine.Operation {
	out := make([]porcupine.Operation, 0, len(h))
	for _, o := range h {
		ret := o.Return
		if o.Out.Unknown {
			ret = math.MaxInt64
		}
		out = append(out, porcupine.Operation{ClientId: o.Client, Input: o.In, Call: o.Call, Output: o.Out, Return: ret})
	}
	return out
}
