package consensus

import (
	"bytes"
	"io"
	"math/rand"
	"os"
	"reflect"
	"strings"
	"testing"
	"testing/iotest"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/blixard/blixard/proto/blixardpb"
)

// restoreViaProto is the reference: proto.Unmarshal, then restoreVM.
func restoreViaProto(data []byte) (*vm, error, bool) {
	var rec blixardpb.VmRecord
	if err := proto.Unmarshal(data, &rec); err != nil {
		return nil, nil, false
	}
	v, err := restoreVM(&rec)
	return v, err, true
}

// checkVMRecordDecoder: whenever the snapshot's VM record decoder takes
// the fast path, proto.Unmarshal accepts the input too and restoreVM
// yields the same VM (or the same error) from both records. It reports
// whether the fast path was taken.
func checkVMRecordDecoder(t testing.TB, d *vmRecordDecoder, data []byte) bool {
	t.Helper()
	rec, ok := d.decode(data)
	if !ok {
		return false
	}
	want, wantErr, parsed := restoreViaProto(data)
	if !parsed {
		t.Fatalf("fast path accepted %x, proto.Unmarshal refused it", data)
	}
	got, gotErr := restoreVM(rec)
	if (gotErr == nil) != (wantErr == nil) || (gotErr != nil && gotErr.Error() != wantErr.Error()) {
		t.Fatalf("decoding %x: error %v, want %v", data, gotErr, wantErr)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("decoding %x:\n got %+v\nwant %+v", data, got, want)
	}
	return true
}

// vmRecords returns the encoded VM records of a state built by random
// commands, plus the records of TestVMEncoderMatchesProto's specs.
func vmRecords(t testing.TB, r *rand.Rand) [][]byte {
	var out [][]byte
	add := func(st *State) {
		for _, v := range st.VMs() {
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(v)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, b)
		}
	}
	s := NewState()
	for i := uint64(1); i <= 3000; i++ {
		s.Apply(i, randomCommand(r, s))
		if i%300 == 0 {
			add(s) // VMs come and go: look at them along the way
		}
	}
	h := &harness{s: NewState()}
	h.s.Apply(1, cmdNode(1, 128, 4<<20))
	for i, sp := range recordSpecs() {
		c := cmdCreate(sp)
		c.TimeUnixMs = -int64(i) * 1000
		h.s.Apply(uint64(i+2), c)
	}
	add(h.s)
	if len(out) < 50 {
		t.Fatalf("only %d VM records", len(out))
	}
	return out
}

// TestVMRecordDecoderMatchesProto: the snapshot's VM record decoder takes
// the fast path for every record Save writes and agrees with
// proto.Unmarshal + restoreVM on them and on mangled copies (flipped
// bytes, truncations, unknown and repeated fields, invalid UTF-8, one
// decoder reused for all, as Restore does).
func TestVMRecordDecoderMatchesProto(t *testing.T) {
	r := rand.New(rand.NewSource(11))
	d := newVMRecordDecoder()
	recs := vmRecords(t, r)
	fast := 0
	for _, data := range recs {
		if !checkVMRecordDecoder(t, d, data) {
			t.Fatalf("fast path refused a record Save writes: %x", data)
		}
		for k := 0; k < 30; k++ {
			in := bytes.Clone(data)
			switch k % 6 {
			case 0:
				in = in[:r.Intn(len(in))]
			case 1:
				in = protowire.AppendVarint(protowire.AppendTag(in, 99, protowire.VarintType), 1) // unknown field
			case 2:
				in = append(in, data...) // every field twice
			case 3:
				in = protowire.AppendString(protowire.AppendTag(in, 8, protowire.BytesType), "bad \xff utf-8")
			default:
				in[r.Intn(len(in))] = byte(r.Intn(256))
			}
			if checkVMRecordDecoder(t, d, in) {
				fast++
			}
		}
	}
	if fast == 0 {
		t.Fatal("fast path never taken on mangled records")
	}
}

// TestVMRecordDecoderKnowsEveryField: a record with every field of
// VmRecord (and of its spec, volumes and restart policy) set takes the
// fast path. When the proto gains a field this fails: teach the decoder
// the field (until then such records take the slow path, correctly).
func TestVMRecordDecoderKnowsEveryField(t *testing.T) {
	rec := &blixardpb.VmRecord{}
	fillAll(rec.ProtoReflect())
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	d := newVMRecordDecoder()
	if _, ok := d.decode(data); !ok {
		t.Fatalf("a record with every field set takes the slow path: add the new fields to vmRecordDecoder\n%v", rec)
	}
	checkVMRecordDecoder(t, d, data)
}

// fillAll sets every field of m, recursively, to a non-zero value.
func fillAll(m protoreflect.Message) {
	fields := m.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		f := fields.Get(i)
		scalar := func(fd protoreflect.FieldDescriptor) protoreflect.Value {
			switch fd.Kind() {
			case protoreflect.StringKind:
				return protoreflect.ValueOfString(strings.Repeat("x", i+1))
			case protoreflect.BoolKind:
				return protoreflect.ValueOfBool(true)
			case protoreflect.EnumKind:
				return protoreflect.ValueOfEnum(1)
			case protoreflect.Uint32Kind:
				return protoreflect.ValueOfUint32(uint32(i + 1))
			case protoreflect.Int32Kind:
				return protoreflect.ValueOfInt32(int32(i + 1))
			case protoreflect.Uint64Kind:
				return protoreflect.ValueOfUint64(uint64(i + 1))
			case protoreflect.Int64Kind:
				return protoreflect.ValueOfInt64(int64(i + 1))
			}
			panic("fillAll: unhandled kind " + fd.Kind().String())
		}
		switch {
		case f.IsMap():
			m.Mutable(f).Map().Set(protoreflect.ValueOfString("k").MapKey(), scalar(f.MapValue()))
		case f.IsList() && f.Kind() == protoreflect.MessageKind:
			fillAll(m.Mutable(f).List().AppendMutable().Message())
		case f.IsList():
			m.Mutable(f).List().Append(scalar(f))
		case f.Kind() == protoreflect.MessageKind:
			fillAll(m.Mutable(f).Message())
		default:
			m.Set(f, scalar(f))
		}
	}
}

// FuzzVMRecordDecoder: on any input, the fast VM record decoder either
// gives up or agrees with proto.Unmarshal + restoreVM.
func FuzzVMRecordDecoder(f *testing.F) {
	for _, b := range vmRecords(f, rand.New(rand.NewSource(5))) {
		f.Add(b)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		checkVMRecordDecoder(t, newVMRecordDecoder(), data)
	})
}

// lyingLen reports fewer bytes than it holds, as a reader that grew
// after Len was asked would.
type lyingLen struct{ *bytes.Reader }

func (l lyingLen) Len() int { return l.Reader.Len() / 2 }

// TestReadAll: Restore's reader reads everything whatever the reader
// says about its length.
func TestReadAll(t *testing.T) {
	data := bytes.Repeat([]byte("blixard "), 10000)
	f, err := os.CreateTemp(t.TempDir(), "snap")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(data); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	for name, r := range map[string]io.Reader{
		"bytes.Reader": bytes.NewReader(data),
		"plain":        iotest.OneByteReader(bytes.NewReader(data)),
		"short Len":    lyingLen{bytes.NewReader(data)},
		"file":         f,
		"empty":        bytes.NewReader(nil),
	} {
		got, err := readAll(r)
		want := data
		if name == "empty" {
			want = nil
		}
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s: read %d bytes (err %v), want %d", name, len(got), err, len(want))
		}
	}
	if _, err := readAll(iotest.ErrReader(io.ErrClosedPipe)); err == nil {
		t.Error("a failing reader gave no error")
	}
}
