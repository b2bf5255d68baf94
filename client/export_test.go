package client

// WithLinger sets the batcher's linger gap and bound, for tests.
var WithLinger = withLinger
