package client_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/asynkron/protoactor-go/actor"
	"github.com/asynkron/protoactor-go/remote"
	"go.uber.org/goleak"

	"github.com/blixard/blixard/client"
	"github.com/blixard/blixard/proto/blixardpb"
)

// Every remote runs in a process of its own (this test binary re-executed):
// protoactor's remote writes grpc's global logger on Start, which the race
// detector flags when another remote's grpc goroutines (even those of a
// closed one, winding down) run in the same process. So fake nodes are
// child processes, and each test that dials runs its body in a child
// (inChild).
func TestMain(m *testing.M) {
	if mode := os.Getenv("BLIXARD_FAKE_NODE"); mode != "" {
		runFakeNode(mode)
		return
	}
	os.Exit(m.Run())
}

// runFakeNode serves an "api" actor whose answers depend on mode, prints
// "ADDR <addr>" and then "REQ <request id>" for every create it sees, and
// exits when stdin closes.
func runFakeNode(mode string) {
	system := actor.NewActorSystem(actor.WithLoggerFactory(func(*actor.ActorSystem) *slog.Logger {
		return slog.New(slog.DiscardHandler)
	}))
	r := remote.NewRemote(system, remote.Configure("127.0.0.1", 0))
	r.Start()
	var mu sync.Mutex
	step := 0
	phases := []blixardpb.VmStatus{blixardpb.VmStatus_VM_STATUS_PENDING, blixardpb.VmStatus_VM_STATUS_STARTING, blixardpb.VmStatus_VM_STATUS_RUNNING}
	out := bufio.NewWriter(os.Stdout)
	answer := func(ctx actor.Context) {
		mu.Lock()
		defer mu.Unlock()
		switch m := ctx.Message().(type) {
		case *blixardpb.CreateVmRequest:
			fmt.Fprintf(out, "REQ %s\n", m.GetRequestId())
			out.Flush()
			switch mode {
			case "unavailable":
				ctx.Respond(&blixardpb.VmResponse{Error: &blixardpb.Error{Code: blixardpb.Code_UNAVAILABLE, Message: "no quorum: test"}})
			case "unavailable-slow":
				// Like a node waiting out its propose timeout: the answer
				// comes late, off the actor loop.
				sender := ctx.Sender()
				time.AfterFunc(400*time.Millisecond, func() {
					system.Root.Send(sender, &blixardpb.VmResponse{Error: &blixardpb.Error{Code: blixardpb.Code_UNAVAILABLE, Message: "no quorum: test"}})
				})
			case "exists":
				ctx.Respond(&blixardpb.VmResponse{Error: &blixardpb.Error{Code: blixardpb.Code_ALREADY_EXISTS, Message: `vm "web" already exists`}})
			case "good":
				ctx.Respond(okVM(m.GetSpec().GetName()))
			case "good-slow":
				sender, res := ctx.Sender(), answerCreate(m.GetSpec().GetName())
				time.AfterFunc(writeDelay(mode), func() { system.Root.Send(sender, res) })
			}
		case *blixardpb.VmWriteBatchRequest:
			fmt.Fprintf(out, "BATCH %d\n", len(m.GetWrites()))
			res := &blixardpb.VmWriteBatchResponse{}
			for _, w := range m.GetWrites() {
				name := w.GetCreate().GetSpec().GetName()
				fmt.Fprintf(out, "REQ %s\n", w.GetCreate().GetRequestId())
				res.Responses = append(res.Responses, answerCreate(name))
			}
			out.Flush()
			if mode == "unavailable-slow" {
				res = &blixardpb.VmWriteBatchResponse{Error: &blixardpb.Error{Code: blixardpb.Code_UNAVAILABLE, Message: "no quorum: test"}}
			}
			sender := ctx.Sender()
			time.AfterFunc(writeDelay(mode), func() { system.Root.Send(sender, res) })
		case *blixardpb.ClusterStatusRequest:
			// The client's liveness probe: a silent node is like a paused
			// process, whose kernel still accepts connections.
			if mode != "silent" {
				ctx.Respond(&blixardpb.ClusterStatusResponse{ClusterId: "test"})
			}
		case *blixardpb.GetVmRequest:
			if mode == "good" {
				ctx.Respond(okVM(m.GetName()))
			}
		case *blixardpb.WatchVmRequest:
			if m.GetName() == "stuck" {
				// Answer late, off the actor loop, like the real api actor.
				sender := ctx.Sender()
				d := time.Duration(m.GetTimeoutMs()) * time.Millisecond
				time.AfterFunc(d, func() {
					system.Root.Send(sender, &blixardpb.VmResponse{Vm: &blixardpb.VmRecord{Spec: &blixardpb.VmSpec{Name: "stuck"}, Status: blixardpb.VmStatus_VM_STATUS_STARTING}})
				})
				return
			}
			st := phases[min(step, len(phases)-1)]
			step++
			ctx.Respond(&blixardpb.VmResponse{Vm: &blixardpb.VmRecord{Spec: &blixardpb.VmSpec{Name: "web"}, NodeId: 2, Status: st}})
		}
	}
	if _, err := system.Root.SpawnNamed(actor.PropsFromFunc(answer), "api"); err != nil {
		panic(err)
	}
	mu.Lock()
	fmt.Fprintf(out, "ADDR %s\n", system.Address())
	out.Flush()
	mu.Unlock()
	io.Copy(io.Discard, os.Stdin)
}

// answerCreate is a good fake node's answer to a create: the vm "exists"
// already does.
func answerCreate(name string) *blixardpb.VmResponse {
	if name == "exists" {
		return &blixardpb.VmResponse{Error: &blixardpb.Error{Code: blixardpb.Code_ALREADY_EXISTS, Message: `vm "exists" already exists`}}
	}
	return okVM(name)
}

// writeDelay is how long a fake node in mode takes to answer a write
// (off the actor loop, like the real api actor).
func writeDelay(mode string) time.Duration {
	switch mode {
	case "good-slow":
		return 300 * time.Millisecond
	case "unavailable-slow":
		return 400 * time.Millisecond
	}
	return 0
}

// fakeNode is a child process running runFakeNode.
type fakeNode struct {
	addr    string
	mu      sync.Mutex
	ids     []string
	batches []int
}

func startFakeNode(t *testing.T, mode string) *fakeNode {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "BLIXARD_FAKE_NODE="+mode)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n := &fakeNode{}
	addr := make(chan string, 1)
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			switch {
			case len(f) == 2 && f[0] == "ADDR":
				addr <- f[1]
			case len(f) == 2 && f[0] == "REQ":
				n.mu.Lock()
				n.ids = append(n.ids, f[1])
				n.mu.Unlock()
			case len(f) == 2 && f[0] == "BATCH":
				var k int
				fmt.Sscan(f[1], &k)
				n.mu.Lock()
				n.batches = append(n.batches, k)
				n.mu.Unlock()
			}
		}
	}()
	t.Cleanup(func() {
		stdin.Close()
		cmd.Process.Kill()
		<-scanned
		cmd.Wait()
	})
	select {
	case n.addr = <-addr:
	case <-time.After(30 * time.Second):
		t.Fatal("fake node did not start")
	}
	return n
}

func (n *fakeNode) batchSizes() []int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]int(nil), n.batches...)
}

func (n *fakeNode) requestIDs() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.ids...)
}

// inChild re-runs the calling test alone in a child process and reports
// its outcome; it returns true in the child, where the test body runs.
func inChild(t *testing.T) bool {
	t.Helper()
	if os.Getenv("BLIXARD_CLIENT_TEST_CHILD") == t.Name() {
		return true
	}
	cmd := exec.Command(os.Args[0], "-test.run=^"+t.Name()+"$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), "BLIXARD_CLIENT_TEST_CHILD="+t.Name())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child test failed: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "--- PASS: "+t.Name()) {
		t.Fatalf("child test did not pass:\n%s", out)
	}
	return false
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	a := l.Addr().String()
	l.Close()
	return a
}

func okVM(name string) *blixardpb.VmResponse {
	return &blixardpb.VmResponse{Vm: &blixardpb.VmRecord{Id: 1, Spec: &blixardpb.VmSpec{Name: name}}}
}

func dial(t *testing.T, addrs []string, opts ...client.Option) *client.Client {
	t.Helper()
	c, err := client.Dial(context.Background(), addrs, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestFailsOverFromDeadAndUnavailableNodesReusingRequestID(t *testing.T) {
	if !inChild(t) {
		return
	}
	unavailable := startFakeNode(t, "unavailable")
	good := startFakeNode(t, "good")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := dial(t, []string{deadAddr(t), unavailable.addr, good.addr})
	vm, err := c.CreateVM(ctx, &blixardpb.VmSpec{Name: "web"}, false)
	if err != nil {
		t.Fatalf("CreateVM: %v", err)
	}
	if vm.GetSpec().GetName() != "web" {
		t.Fatalf("got %v", vm)
	}
	waitFor(t, func() bool { return len(good.requestIDs()) == 1 })
	a, b := unavailable.requestIDs(), good.requestIDs()
	if len(a) != 1 || a[0] != b[0] || len(a[0]) != 32 {
		t.Fatalf("request ids: unavailable node saw %q, good node saw %q; want the same 32-hex id once each", a, b)
	}
	// The next call goes straight to the node that answered, with a new id.
	if _, err := c.CreateVM(ctx, &blixardpb.VmSpec{Name: "db"}, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(good.requestIDs()) == 2 })
	if n := len(unavailable.requestIDs()); n != 1 {
		t.Fatalf("unavailable node asked again (%d requests)", n)
	}
	if got := good.requestIDs(); got[0] == got[1] {
		t.Fatalf("two calls shared request id %q", got[0])
	}
}

// waitFor polls cond until it holds or 10 s pass (the fake node reports
// over a pipe, after it answered).
func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestTypedErrors(t *testing.T) {
	if !inChild(t) {
		return
	}
	n := startFakeNode(t, "exists")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := dial(t, []string{n.addr})
	_, err := c.CreateVM(ctx, &blixardpb.VmSpec{Name: "web"}, false)
	if !errors.Is(err, client.ErrAlreadyExists) || errors.Is(err, client.ErrNotFound) {
		t.Fatalf("err = %v, want ErrAlreadyExists", err)
	}
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Code != blixardpb.Code_ALREADY_EXISTS || ce.Error() != `vm "web" already exists` {
		t.Fatalf("err = %#v", err)
	}
}

func TestAllNodesDownIsUnavailable(t *testing.T) {
	if !inChild(t) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := dial(t, []string{deadAddr(t), deadAddr(t)}, client.WithRetryWindow(500*time.Millisecond))
	_, err := c.GetVM(ctx, "web")
	if !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("err = %v, want ErrUnavailable", err)
	}
}

// A node that keeps answering "no quorum" slowly: when the retry window
// ends in the middle of an attempt, the error is still the node's answer,
// not the cut-short attempt's timeout.
func TestRetryWindowEndKeepsTheNodesAnswer(t *testing.T) {
	if !inChild(t) {
		return
	}
	slow := startFakeNode(t, "unavailable-slow")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := dial(t, []string{slow.addr}, client.WithRetryWindow(1500*time.Millisecond))
	_, err := c.CreateVM(ctx, &blixardpb.VmSpec{Name: "web", Vcpus: 1, MemoryMb: 64}, false)
	var ce *client.Error
	if !errors.As(err, &ce) || ce.Code != blixardpb.Code_UNAVAILABLE || ce.Message != "no quorum: test" {
		t.Fatalf("err = %v, want the node's answer \"no quorum: test\"", err)
	}
}

func TestNoAnswerTimesOutAndFailsOver(t *testing.T) {
	if !inChild(t) {
		return
	}
	silent := startFakeNode(t, "silent")
	good := startFakeNode(t, "good")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := dial(t, []string{silent.addr, good.addr}, client.WithAttemptTimeout(300*time.Millisecond))
	if _, err := c.GetVM(ctx, "web"); err != nil {
		t.Fatal(err)
	}
}

// A node that accepts connections but never answers (a paused process) is
// passed over after the status probe, not after the attempt timeout: with
// a one-minute attempt timeout, the request still completes within the
// 15 s retry window through the next node.
func TestPausedNodeIsSkippedByTheStatusProbe(t *testing.T) {
	if !inChild(t) {
		return
	}
	silent := startFakeNode(t, "silent")
	good := startFakeNode(t, "good")
	c := dial(t, []string{silent.addr, good.addr}, client.WithAttemptTimeout(time.Minute), client.WithRetryWindow(15*time.Second))
	if _, err := c.GetVM(context.Background(), "web"); err != nil {
		t.Fatalf("the request did not fail over from the silent node within the retry window: %v", err)
	}
}

func TestWaitForReportsPhasesAndTimesOut(t *testing.T) {
	if !inChild(t) {
		return
	}
	n := startFakeNode(t, "phases")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := dial(t, []string{n.addr})
	var seen []string
	rec, err := c.WaitFor(ctx, "web", blixardpb.VmStatus_VM_STATUS_RUNNING, func(r *blixardpb.VmRecord) {
		seen = append(seen, client.StatusName(r.GetStatus()))
	})
	if err != nil || rec.GetStatus() != blixardpb.VmStatus_VM_STATUS_RUNNING {
		t.Fatalf("WaitFor = %v, %v", rec, err)
	}
	if got, want := strings.Join(seen, " "), "pending starting running"; got != want {
		t.Fatalf("phases %q, want %q", got, want)
	}

	// The error names the last status seen: "unknown" when the deadline
	// came before the first answer (a loaded machine), else the stuck
	// VM's.
	short, cancel2 := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel2()
	last := "unknown"
	_, err = c.WaitFor(short, "stuck", blixardpb.VmStatus_VM_STATUS_RUNNING, func(r *blixardpb.VmRecord) {
		last = client.StatusName(r.GetStatus())
	})
	var wt *client.WaitTimeoutError
	if !errors.As(err, &wt) || !errors.Is(err, client.ErrDeadlineExceeded) {
		t.Fatalf("err = %v, want a WaitTimeoutError", err)
	}
	if want := "timed out waiting for vm stuck to be running (last status: " + last + ")"; err.Error() != want {
		t.Fatalf("err = %q, want %q", err, want)
	}
}

func TestCloseLeaksNoGoroutines(t *testing.T) {
	if !inChild(t) {
		return
	}
	n := startFakeNode(t, "good")
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := client.Dial(ctx, []string{n.addr})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := c.GetVM(ctx, "web"); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestDialRejectsBadAddress(t *testing.T) {
	if _, err := client.Dial(context.Background(), []string{"nohost"}); err == nil || !strings.Contains(err.Error(), "want host:port") {
		t.Fatalf("err = %v", err)
	}
	if _, err := client.Dial(context.Background(), nil); err == nil {
		t.Fatal("no error for no addresses")
	}
}

func TestNormalizeAddr(t *testing.T) {
	for in, want := range map[string]string{
		"localhost:7001": "127.0.0.1:7001",
		":7001":          "127.0.0.1:7001",
		"10.1.2.3:7001":  "10.1.2.3:7001",
		"[::1]:7001":     "[::1]:7001",
	} {
		if got, err := client.NormalizeAddr(in); err != nil || got != want {
			t.Errorf("NormalizeAddr(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"7001", "host:", "host:port", "host:70000"} {
		if _, err := client.NormalizeAddr(bad); err == nil {
			t.Errorf("NormalizeAddr(%q) accepted", bad)
		}
	}
}

// createConcurrently makes n concurrent CreateVM calls for names w0...
// (w3 is named "exists" when withExisting) and returns their errors.
func createConcurrently(ctx context.Context, c *client.Client, n int, withExisting bool) []error {
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			name := fmt.Sprintf("w%d", i)
			if withExisting && i == 3 {
				name = "exists"
			}
			vm, err := c.CreateVM(ctx, &blixardpb.VmSpec{Name: name}, true)
			if err == nil && vm.GetSpec().GetName() != name {
				err = fmt.Errorf("call for %s got the record of %s", name, vm.GetSpec().GetName())
			}
			errs[i] = err
		})
	}
	wg.Wait()
	return errs
}

// TestConcurrentWritesAreBatched: writes made while one is outstanding
// to a node go together in one VmWriteBatchRequest; every call gets its
// own answer (one of them a typed error), and the node sees every request
// id once.
func TestConcurrentWritesAreBatched(t *testing.T) {
	if !inChild(t) {
		return
	}
	node := startFakeNode(t, "good-slow")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := dial(t, []string{node.addr})
	errs := createConcurrently(ctx, c, 20, true)
	for i, err := range errs {
		if i == 3 {
			if !errors.Is(err, client.ErrAlreadyExists) {
				t.Errorf("create of the existing vm: %v, want ErrAlreadyExists", err)
			}
		} else if err != nil {
			t.Errorf("create w%d: %v", i, err)
		}
	}
	waitFor(t, func() bool { return len(node.requestIDs()) == 20 })
	seen := map[string]bool{}
	for _, id := range node.requestIDs() {
		if seen[id] {
			t.Fatalf("request id %s sent twice", id)
		}
		seen[id] = true
	}
	batched := 0
	for _, k := range node.batchSizes() {
		batched += k
	}
	if batched < 10 {
		t.Fatalf("only %d of 20 concurrent writes went in batches (%v)", batched, node.batchSizes())
	}
}

// TestBatchRefusedWholeFailsOver: a node that answers a batch as a whole
// with UNAVAILABLE sends each write on to the next node, as a single write
// would go.
func TestBatchRefusedWholeFailsOver(t *testing.T) {
	if !inChild(t) {
		return
	}
	down := startFakeNode(t, "unavailable-slow")
	good := startFakeNode(t, "good")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := dial(t, []string{down.addr, good.addr})
	for i, err := range createConcurrently(ctx, c, 10, false) {
		if err != nil {
			t.Errorf("create w%d: %v", i, err)
		}
	}
	if len(down.batchSizes()) == 0 {
		t.Fatal("no batch reached the unavailable node")
	}
	waitFor(t, func() bool { return len(good.requestIDs()) == 10 })
}

// TestUnencodableWriteIsRefusedAlone: a write protobuf cannot encode
// fails at once with INVALID_ARGUMENT and is never sent.
func TestUnencodableWriteIsRefusedAlone(t *testing.T) {
	if !inChild(t) {
		return
	}
	node := startFakeNode(t, "good")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := dial(t, []string{node.addr})
	_, err := c.CreateVM(ctx, &blixardpb.VmSpec{Name: "bad-\xff"}, true)
	if !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("create with invalid UTF-8: %v, want ErrInvalidArgument", err)
	}
	if _, err := c.CreateVM(ctx, &blixardpb.VmSpec{Name: "fine"}, true); err != nil {
		t.Fatal(err)
	}
	waitFor(t, func() bool { return len(node.requestIDs()) == 1 })
}

// TestAnsweredCallersLingerIntoOneBatch: callers that write again as soon
// as their write is answered go together in one batch; without the
// linger they would split into two groups sending alternate batches.
func TestAnsweredCallersLingerIntoOneBatch(t *testing.T) {
	if !inChild(t) {
		return
	}
	node := startFakeNode(t, "good-slow")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// A gap far longer than a caller takes to write again, so that the
	// outcome does not depend on the machine's speed.
	c := dial(t, []string{node.addr}, client.WithLinger(time.Second, 10*time.Second))
	const workers, rounds = 8, 4
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for r := range rounds {
				name := fmt.Sprintf("w%d-%d", w, r)
				if _, err := c.CreateVM(ctx, &blixardpb.VmSpec{Name: name}, true); err != nil {
					t.Errorf("create %s: %v", name, err)
				}
			}
		})
	}
	wg.Wait()
	waitFor(t, func() bool { return len(node.requestIDs()) == workers*rounds })
	full := 0
	for _, k := range node.batchSizes() {
		if k > workers {
			t.Fatalf("a batch of %d writes from %d callers (%v)", k, workers, node.batchSizes())
		}
		if k == workers {
			full++
		}
	}
	// The first write goes alone and the other seven as a batch; from then
	// on each round is one batch of all eight.
	if full < rounds-1 {
		t.Fatalf("batches %v: want at least %d of all %d callers", node.batchSizes(), rounds-1, workers)
	}
}
