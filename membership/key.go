package membership

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"fmt"
)

// ParseKey decodes a gossip key: base64 or hex text of 16, 24 or 32
// bytes (AES-128/192/256), or those raw bytes.
func ParseKey(b []byte) ([]byte, error) {
	t := bytes.TrimSpace(b)
	ok := func(k []byte) bool { return len(k) == 16 || len(k) == 24 || len(k) == 32 }
	if k, err := hex.DecodeString(string(t)); err == nil && ok(k) {
		return k, nil
	}
	if k, err := base64.StdEncoding.DecodeString(string(t)); err == nil && ok(k) {
		return k, nil
	}
	if ok(b) {
		return b, nil
	}
	return nil, fmt.Errorf("want 16, 24 or 32 bytes (raw, base64 or hex), got %d bytes", len(t))
}
