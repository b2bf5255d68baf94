package qemu

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// qmpHandler answers one command: the reply is sent as {"return": reply};
// a *QMPError is sent as {"error": ...}; events are sent before the reply.
// close=true drops the connection instead of replying.
type qmpHandler func(cmd string, args json.RawMessage) (reply any, events []string, close bool)

// serveQMP speaks the server side of QMP on conn until it closes: the
// greeting, then one reply per command. It is the fake of the tests and
// of the fake qemu process.
func serveQMP(conn net.Conn, greeting string, h qmpHandler) {
	defer conn.Close()
	w := bufio.NewWriter(conn)
	send := func(s string) { w.WriteString(s + "\n"); w.Flush() }
	send(greeting)
	dec := json.NewDecoder(conn)
	for {
		var req struct {
			Execute   string          `json:"execute"`
			Arguments json.RawMessage `json:"arguments"`
		}
		if err := dec.Decode(&req); err != nil {
			return
		}
		reply, events, drop := h(req.Execute, req.Arguments)
		for _, ev := range events {
			send(`{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "` + ev + `"}`)
		}
		if drop {
			return
		}
		var b []byte
		if qe, ok := reply.(*QMPError); ok {
			b, _ = json.Marshal(map[string]any{"error": map[string]string{"class": qe.Class, "desc": qe.Desc}})
		} else {
			if reply == nil {
				reply = struct{}{}
			}
			b, _ = json.Marshal(map[string]any{"return": reply})
		}
		send(string(b))
	}
}

const testGreeting = `{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": ["oob"]}}`

// fakeQMPServer listens on a socket in a temp dir and records commands.
type fakeQMPServer struct {
	path string
	mu   sync.Mutex
	cmds []string
}

func startFakeQMP(t *testing.T, greeting string, h qmpHandler) *fakeQMPServer {
	t.Helper()
	s := &fakeQMPServer{path: filepath.Join(t.TempDir(), "qmp.sock")}
	ln, err := net.Listen("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				serveQMP(c, greeting, func(cmd string, args json.RawMessage) (any, []string, bool) {
					s.mu.Lock()
					s.cmds = append(s.cmds, cmd)
					s.mu.Unlock()
					return h(cmd, args)
				})
			}()
		}
	}()
	return s
}

func (s *fakeQMPServer) commands() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Join(s.cmds, " ")
}

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func TestQMPCommands(t *testing.T) {
	srv := startFakeQMP(t, testGreeting, func(cmd string, _ json.RawMessage) (any, []string, bool) {
		switch cmd {
		case "qmp_capabilities":
			return nil, nil, false
		case "query-status":
			// An event arrives before the reply; the client must skip it.
			return map[string]any{"running": true, "singlestep": false, "status": "running"}, []string{"RTC_CHANGE"}, false
		case "system_powerdown":
			return nil, []string{"POWERDOWN"}, false
		case "quit":
			return nil, []string{"SHUTDOWN"}, true // qemu may exit before replying
		}
		return &QMPError{Class: "CommandNotFound", Desc: "The command " + cmd + " has not been found"}, nil, false
	})
	ctx := testCtx(t, 10*time.Second)
	q, err := DialQMP(ctx, srv.path)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	if v := q.Greeting.QMP.Version.Qemu; v.Major != 7 || v.Minor != 2 {
		t.Errorf("greeting version = %+v", v)
	}
	st, err := q.Status(ctx)
	if err != nil || !st.Running || st.Status != "running" {
		t.Fatalf("Status = %+v, %v; want running", st, err)
	}
	if err := q.Powerdown(ctx); err != nil {
		t.Fatalf("Powerdown: %v", err)
	}
	err = q.Execute(ctx, "bogus", nil, nil)
	var qe *QMPError
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" || qe.Command != "bogus" {
		t.Fatalf("bogus command: err = %v, want a CommandNotFound QMPError", err)
	}
	if err := q.Quit(ctx); err != nil {
		t.Fatalf("Quit with the connection dropped: %v", err)
	}
	if got, want := srv.commands(), "qmp_capabilities query-status system_powerdown bogus quit"; got != want {
		t.Errorf("server saw %q, want %q", got, want)
	}
}

func TestQMPArguments(t *testing.T) {
	var got string
	srv := startFakeQMP(t, testGreeting, func(cmd string, args json.RawMessage) (any, []string, bool) {
		if cmd == "human-monitor-command" {
			got = string(args)
			return "ok\r\n", nil, false
		}
		return nil, nil, false
	})
	ctx := testCtx(t, 10*time.Second)
	q, err := DialQMP(ctx, srv.path)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	var out string
	if err := q.Execute(ctx, "human-monitor-command", map[string]string{"command-line": "info name"}, &out); err != nil {
		t.Fatal(err)
	}
	if out != "ok\r\n" || got != `{"command-line":"info name"}` {
		t.Errorf("reply %q, arguments %s", out, got)
	}
}

func TestQMPNotAQMPServer(t *testing.T) {
	srv := startFakeQMP(t, `{"hello": "world"}`, func(string, json.RawMessage) (any, []string, bool) { return nil, nil, false })
	if _, err := DialQMP(testCtx(t, 5*time.Second), srv.path); err == nil || !strings.Contains(err.Error(), "not a QMP server") {
		t.Fatalf("DialQMP to a non-QMP server: err = %v", err)
	}
}

func TestQMPDeadline(t *testing.T) {
	// A server that greets but never answers: the context bounds the call.
	srv := startFakeQMP(t, testGreeting, func(cmd string, _ json.RawMessage) (any, []string, bool) {
		if cmd == "qmp_capabilities" {
			return nil, nil, false
		}
		time.Sleep(time.Second)
		return nil, nil, true
	})
	q, err := DialQMP(testCtx(t, 5*time.Second), srv.path)
	if err != nil {
		t.Fatal(err)
	}
	defer q.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = q.Status(ctx)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Status on a silent server: err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("Status returned after %s, want about 200ms", d)
	}
}

func TestQMPNoSocket(t *testing.T) {
	_, err := DialQMP(testCtx(t, time.Second), filepath.Join(t.TempDir(), "none.sock"))
	if err == nil {
		t.Fatal("DialQMP to a missing socket succeeded")
	}
}
