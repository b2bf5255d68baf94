package consensus

import (
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/blixard/blixard/proto/blixardpb"
)

// vmRecordDecoder decodes the VM records of a snapshot without reflection
// and with few allocations: it fills one scratch VmRecord (spec, restart
// policy, volumes and label map included) that it reuses for every
// record, and interns the strings that VMs share (tenant, kernel, initrd,
// flake, kernel params, volume fields, label keys and values, messages),
// so 100,000 VMs built from a handful of images hold one copy of each
// path. The scratch record goes through restoreVM like any other, so
// validation is the same code whichever decoder ran.
//
// Anything the fast path does not handle — an unknown field number, a
// wrong wire type, a repeated singular message, invalid UTF-8, a
// malformed length — makes decode report false, and the caller decodes
// that record with proto.Unmarshal instead: both paths give the same VM
// or the same error, which a test checks on valid and mangled records.
type vmRecordDecoder struct {
	rec     blixardpb.VmRecord
	spec    blixardpb.VmSpec
	restart blixardpb.RestartPolicy
	vols    []*blixardpb.Volume // scratch volumes, reused in order
	labels  map[string]string
	params  []string
	strs    map[string]string // interned strings, all valid UTF-8
}

func newVMRecordDecoder() *vmRecordDecoder {
	return &vmRecordDecoder{labels: make(map[string]string, 4), strs: make(map[string]string, 64)}
}

// intern returns b as a string shared with every equal string decoded
// before; ok is false when b is not valid UTF-8. Interned strings live as
// long as a VM uses them; the table itself is dropped with the decoder.
func (d *vmRecordDecoder) intern(b []byte) (string, bool) {
	if s, ok := d.strs[string(b)]; ok {
		return s, true
	}
	if !utf8.Valid(b) {
		return "", false
	}
	s := string(b)
	d.strs[s] = s
	return s, true
}

// internField reads r's next string field, interned; invalid UTF-8 fails r.
func (d *vmRecordDecoder) internField(r *wireReader, typ protowire.Type) string {
	s, ok := d.intern(r.bytesField(typ))
	r.ok = r.ok && ok
	return s
}

// ownField reads r's next string field as a string of its own (for values
// unique to a VM); invalid UTF-8 fails r.
func ownField(r *wireReader, typ protowire.Type) string {
	b := r.bytesField(typ)
	if !utf8.Valid(b) {
		r.ok = false
		return ""
	}
	return string(b)
}

// bytesField returns the next length-delimited value (aliasing r's input).
func (r *wireReader) bytesField(typ protowire.Type) []byte {
	s := r.sub(typ)
	return s.b
}

// decode fills the scratch record from b and returns it; the record (and
// its spec, volumes and labels) is valid until the next call. ok is false
// when the fast path gave up (see the type comment).
func (d *vmRecordDecoder) decode(b []byte) (rec *blixardpb.VmRecord, ok bool) {
	rec = &d.rec
	*rec = blixardpb.VmRecord{}
	r := wireReader{b: b, ok: true}
	for r.more() {
		num, typ := r.tag()
		if !r.ok {
			break
		}
		switch num {
		case 1:
			rec.Id = r.varint(typ)
		case 2:
			if rec.Spec != nil {
				return nil, false // proto would merge the two; leave that to it
			}
			sub := r.sub(typ)
			if !r.ok || !d.decodeSpec(&sub) {
				return nil, false
			}
			rec.Spec = &d.spec
		case 3:
			rec.Desired = blixardpb.DesiredState(int32(r.varint(typ)))
		case 4:
			rec.NodeId = r.varint(typ)
		case 5:
			rec.Generation = r.varint(typ)
		case 6:
			rec.Status = blixardpb.VmStatus(int32(r.varint(typ)))
		case 7:
			rec.Restarts = uint32(r.varint(typ))
		case 8:
			rec.Message = d.internField(&r, typ)
		case 9:
			rec.Ip = ownField(&r, typ)
		case 10, 11:
			// mac and tap are derived from ip and id; restoreVM ignores
			// them, but proto.Unmarshal would reject invalid UTF-8.
			b := r.bytesField(typ)
			r.ok = r.ok && utf8.Valid(b)
		case 12:
			rec.CreatedUnixMs = int64(r.varint(typ))
		case 13:
			rec.UpdatedUnixMs = int64(r.varint(typ))
		case 14:
			rec.MigrateTo = r.varint(typ)
		default:
			return nil, false
		}
	}
	return rec, r.ok
}

func (d *vmRecordDecoder) decodeSpec(r *wireReader) bool {
	sp := &d.spec
	*sp = blixardpb.VmSpec{}
	d.params = d.params[:0]
	clear(d.labels)
	nvols := 0
	for r.more() {
		num, typ := r.tag()
		if !r.ok {
			break
		}
		switch num {
		case 1:
			sp.Name = ownField(r, typ)
		case 2:
			sp.Tenant = d.internField(r, typ)
		case 3:
			sp.Hypervisor = d.internField(r, typ)
		case 4:
			sp.Vcpus = uint32(r.varint(typ))
		case 5:
			sp.MemoryMb = r.varint(typ)
		case 6:
			sp.Kernel = d.internField(r, typ)
		case 7:
			sp.Initrd = d.internField(r, typ)
		case 8:
			sp.Flake = d.internField(r, typ)
		case 9:
			d.params = append(d.params, d.internField(r, typ))
		case 10:
			sub := r.sub(typ)
			if !r.ok {
				return false
			}
			if nvols == len(d.vols) {
				d.vols = append(d.vols, &blixardpb.Volume{})
			}
			vol := d.vols[nvols]
			nvols++
			vol.Name, vol.Image, vol.SizeMb, vol.MountPoint, vol.ReadOnly = "", "", 0, "", false
			for sub.more() {
				num, typ := sub.tag()
				if !sub.ok {
					break
				}
				switch num {
				case 1:
					vol.Name = d.internField(&sub, typ)
				case 2:
					vol.Image = d.internField(&sub, typ)
				case 3:
					vol.SizeMb = sub.varint(typ)
				case 4:
					vol.MountPoint = d.internField(&sub, typ)
				case 5:
					vol.ReadOnly = sub.varint(typ) != 0
				default:
					return false
				}
			}
			r.ok = r.ok && sub.ok
		case 11:
			if sp.Restart != nil {
				return false
			}
			sub := r.sub(typ)
			if !r.ok {
				return false
			}
			rp := &d.restart
			rp.Mode, rp.MaxRestarts, rp.WindowSeconds = "", 0, 0
			for sub.more() {
				num, typ := sub.tag()
				if !sub.ok {
					break
				}
				switch num {
				case 1:
					rp.Mode = d.internField(&sub, typ)
				case 2:
					rp.MaxRestarts = uint32(sub.varint(typ))
				case 3:
					rp.WindowSeconds = uint32(sub.varint(typ))
				default:
					return false
				}
			}
			r.ok = r.ok && sub.ok
			sp.Restart = rp
		case 12:
			sp.NodeId = r.varint(typ)
		case 13:
			sub := r.sub(typ)
			if !r.ok {
				return false
			}
			var k, v string
			for sub.more() {
				num, typ := sub.tag()
				if !sub.ok {
					break
				}
				switch num {
				case 1:
					k = d.internField(&sub, typ)
				case 2:
					v = d.internField(&sub, typ)
				default:
					return false
				}
			}
			r.ok = r.ok && sub.ok
			d.labels[k] = v
		default:
			return false
		}
	}
	if !r.ok {
		return false
	}
	if len(d.params) > 0 {
		sp.KernelParams = d.params // validateSpec copies it
	}
	if nvols > 0 {
		sp.Volumes = d.vols[:nvols]
	}
	if len(d.labels) > 0 {
		sp.Labels = d.labels
	}
	return true
}
