package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// QMP is a client of qemu's machine protocol (QMP) over the VM's unix
// socket: line-delimited JSON, a greeting from qemu, capability
// negotiation, then commands each answered by "return" or "error", with
// asynchronous events in between (which the client skips). One command
// runs at a time; methods are safe for concurrent use.
type QMP struct {
	mu   sync.Mutex
	conn net.Conn
	dec  *json.Decoder
	// Greeting is qemu's version as announced on connect.
	Greeting QMPGreeting
}

// QMPGreeting is the part of qemu's greeting the driver uses.
type QMPGreeting struct {
	QMP struct {
		Version struct {
			Qemu struct {
				Major int `json:"major"`
				Minor int `json:"minor"`
				Micro int `json:"micro"`
			} `json:"qemu"`
			Package string `json:"package"`
		} `json:"version"`
		Capabilities []string `json:"capabilities"`
	} `json:"QMP"`
}

// QMPError is an error qemu returned for a command.
type QMPError struct {
	Command string
	Class   string `json:"class"`
	Desc    string `json:"desc"`
}

func (e *QMPError) Error() string {
	return fmt.Sprintf("qmp %s: %s: %s", e.Command, e.Class, e.Desc)
}

// QMPStatus is the answer to query-status.
type QMPStatus struct {
	Running bool   `json:"running"`
	Status  string `json:"status"` // "running", "paused", "shutdown", ...
}

// qmpMessage is any line qemu sends.
type qmpMessage struct {
	Return json.RawMessage `json:"return"`
	Error  *QMPError       `json:"error"`
	Event  string          `json:"event"`
	ID     json.RawMessage `json:"id"`
}

// DialQMP connects to the QMP socket at path, reads the greeting and
// negotiates capabilities (qmp_capabilities), bounded by ctx.
func DialQMP(ctx context.Context, path string) (*QMP, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: %w", err)
	}
	q := &QMP{conn: conn, dec: json.NewDecoder(bufio.NewReader(conn))}
	if err := q.withDeadline(ctx, func() error {
		if err := q.dec.Decode(&q.Greeting); err != nil {
			return fmt.Errorf("qmp greeting: %w", err)
		}
		if q.Greeting.QMP.Capabilities == nil {
			return errors.New("qmp greeting: not a QMP server")
		}
		return q.execute("qmp_capabilities", nil, nil)
	}); err != nil {
		conn.Close()
		return nil, err
	}
	return q, nil
}

// Close closes the connection.
func (q *QMP) Close() error { return q.conn.Close() }

// Execute runs command with args (nil for none) and decodes its "return"
// value into result (nil to ignore it). A qemu error is a *QMPError.
func (q *QMP) Execute(ctx context.Context, command string, args, result any) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.withDeadline(ctx, func() error { return q.execute(command, args, result) })
}

// Powerdown asks the guest to shut down (an ACPI power-button press).
func (q *QMP) Powerdown(ctx context.Context) error {
	return q.Execute(ctx, "system_powerdown", nil, nil)
}

// Quit makes qemu exit at once, without the guest's cooperation. qemu may
// close the socket before answering; that counts as success.
func (q *QMP) Quit(ctx context.Context) error {
	err := q.Execute(ctx, "quit", nil, nil)
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Status returns the VM's run state (query-status).
func (q *QMP) Status(ctx context.Context) (QMPStatus, error) {
	var st QMPStatus
	err := q.Execute(ctx, "query-status", nil, &st)
	return st, err
}

func (q *QMP) withDeadline(ctx context.Context, f func() error) error {
	if dl, ok := ctx.Deadline(); ok {
		q.conn.SetDeadline(dl)
	} else {
		q.conn.SetDeadline(time.Time{})
	}
	// Cancellation without a deadline: unblock the I/O by expiring it.
	stop := context.AfterFunc(ctx, func() { q.conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	err := f()
	if err != nil && errors.Is(err, os.ErrDeadlineExceeded) {
		// The connection's deadline is ctx's: its timer may fire a moment
		// before ctx's own, so wait for ctx to say so.
		<-ctx.Done()
	}
	if err != nil && ctx.Err() != nil {
		return fmt.Errorf("qmp: %w", ctx.Err())
	}
	return err
}

func (q *QMP) execute(command string, args, result any) error {
	req := map[string]any{"execute": command}
	if args != nil {
		req["arguments"] = args
	}
	b, err := json.Marshal(req)
	if err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	if _, err := q.conn.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	for {
		var m qmpMessage
		if err := q.dec.Decode(&m); err != nil {
			return fmt.Errorf("qmp %s: %w", command, err)
		}
		switch {
		case m.Error != nil:
			m.Error.Command = command
			return m.Error
		case m.Return != nil:
			if result != nil {
				if err := json.Unmarshal(m.Return, result); err != nil {
					return fmt.Errorf("qmp %s: decoding reply: %w", command, err)
				}
			}
			return nil
		}
		// An event (or anything else without a reply): keep reading.
	}
}
