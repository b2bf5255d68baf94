package consensus

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lni/dragonboat/v4/logger"
)

// Dragonboat logs through a process-global factory that may be installed
// only once (logger.SetLoggerFactory panics on a second call) and whose
// loggers are created lazily on first use. installRaftLogger installs our
// factory exactly once per process; the slog.Logger it forwards to lives
// in raftLogSink so that it can be set after the factory is installed.
//
// Because the factory is global, the Logger of the first replica started
// in the process receives dragonboat's own messages for the life of the
// process. Production runs one Replica per process, so this is the node
// logger; tests running several replicas in one process see all of
// dragonboat's messages on the first replica's logger.

var (
	raftLoggerOnce sync.Once
	raftLogSink    atomic.Pointer[slog.Logger]
)

// installRaftLogger routes dragonboat's logging to l (once per process).
func installRaftLogger(l *slog.Logger) {
	if l != nil {
		raftLogSink.CompareAndSwap(nil, l)
	}
	raftLoggerOnce.Do(func() {
		defer func() {
			// Something else in the process installed a factory first;
			// dragonboat then logs through it.
			if recover() != nil {
				raftSink().Warn("dragonboat logger factory already set elsewhere: its messages bypass blixard's logger")
			}
		}()
		logger.SetLoggerFactory(newRaftLogger)
	})
}

// defaultRaftLogLevel is the level of every dragonboat package logger
// until something calls SetLevel on it. Dragonboat is chatty at INFO
// (every election, every snapshot, every connection).
const defaultRaftLogLevel = logger.WARNING

// raftLogger adapts one dragonboat package logger to slog.
type raftLogger struct {
	pkg   string
	level atomic.Int32 // a logger.LogLevel
	sink  func() *slog.Logger
	// last holds, per format, when it was last logged at its own level
	// (unix nanoseconds, *atomic.Int64).
	last sync.Map
}

func newRaftLogger(pkg string) logger.ILogger {
	l := &raftLogger{pkg: pkg, sink: raftSink}
	l.level.Store(int32(defaultRaftLogLevel))
	return l
}

// SetLevel implements logger.ILogger.
func (l *raftLogger) SetLevel(level logger.LogLevel) { l.level.Store(int32(level)) }

// Debugf implements logger.ILogger.
func (l *raftLogger) Debugf(format string, args ...any) {
	l.log(logger.DEBUG, slog.LevelDebug, format, args)
}

// Infof implements logger.ILogger.
func (l *raftLogger) Infof(format string, args ...any) {
	l.log(logger.INFO, slog.LevelInfo, format, args)
}

// Warningf implements logger.ILogger. Warnings known to be routine in
// blixard's setup are demoted (see raftWarningDemotions); repeats of the
// same warning within raftLogRepeatWindow are demoted to DEBUG.
func (l *raftLogger) Warningf(format string, args ...any) {
	level, sl := logger.WARNING, slog.LevelWarn
	for _, d := range raftWarningDemotions {
		if strings.Contains(format, d.substr) {
			level, sl = d.level, d.slevel
			break
		}
	}
	if level == logger.WARNING && l.repeated(format) {
		level, sl = logger.DEBUG, slog.LevelDebug
	}
	l.log(level, sl, format, args)
}

// Errorf implements logger.ILogger. Repeats of the same error within
// raftLogRepeatWindow are demoted to DEBUG: dragonboat's transport logs
// every failed reconnection to a peer that is down.
func (l *raftLogger) Errorf(format string, args ...any) {
	if l.repeated(format) {
		l.log(logger.DEBUG, slog.LevelDebug, format, args)
		return
	}
	l.log(logger.ERROR, slog.LevelError, format, args)
}

// Panicf implements logger.ILogger: it logs at ERROR, then panics as
// dragonboat expects.
func (l *raftLogger) Panicf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	l.sink().LogAttrs(context.Background(), slog.LevelError, msg,
		slog.String("component", "dragonboat"), slog.String("pkg", l.pkg))
	panic(msg)
}

func (l *raftLogger) log(level logger.LogLevel, sl slog.Level, format string, args []any) {
	if level > logger.LogLevel(l.level.Load()) {
		return
	}
	sink := l.sink()
	ctx := context.Background()
	if !sink.Enabled(ctx, sl) {
		return
	}
	sink.LogAttrs(ctx, sl, fmt.Sprintf(format, args...),
		slog.String("component", "dragonboat"), slog.String("pkg", l.pkg))
}

func raftSink() *slog.Logger {
	if l := raftLogSink.Load(); l != nil {
		return l
	}
	return slog.Default()
}

// raftLogRepeatWindow is how long a WARNING or ERROR format stays quiet
// after it was logged once.
const raftLogRepeatWindow = 30 * time.Second

// repeated reports whether format was logged at its own level less than
// raftLogRepeatWindow ago, and otherwise records that it is logged now.
func (l *raftLogger) repeated(format string) bool {
	now := time.Now().UnixNano()
	v, _ := l.last.LoadOrStore(format, new(atomic.Int64))
	last := v.(*atomic.Int64)
	prev := last.Load()
	if prev != 0 && now-prev < int64(raftLogRepeatWindow) {
		return true
	}
	return !last.CompareAndSwap(prev, now)
}

type raftDemotion struct {
	substr string
	level  logger.LogLevel
	slevel slog.Level
}

// raftWarningDemotions lists dragonboat warnings (matched on the format
// string) that describe routine events in blixard's setup. Elections are
// normal state changes and go to INFO; dropped requests are retried by
// the Replica and go to DEBUG. "has lost quorum" is deliberately absent.
var raftWarningDemotions = []raftDemotion{
	// Transport security is a deployment decision; dragonboat repeats it
	// for every NodeHost.
	{"mutual TLS disabled", logger.DEBUG, slog.LevelDebug},
	// We call StaleRead on purpose for --stale reads.
	{"StaleRead called", logger.DEBUG, slog.LevelDebug},
	// Requests dropped while there is no leader; Replica retries them.
	{"dropped proposal, no leader", logger.DEBUG, slog.LevelDebug},
	{"dropped read index, no leader", logger.DEBUG, slog.LevelDebug},
	{"dropped ReadIndex, no leader", logger.DEBUG, slog.LevelDebug},
	{"dropped ReadIndex, not ready", logger.DEBUG, slog.LevelDebug},
	{"dropped proposal, leader transferring", logger.DEBUG, slog.LevelDebug},
	{"dropped config change, pending change", logger.DEBUG, slog.LevelDebug},
	// Elections.
	{"became PreVote candidate", logger.INFO, slog.LevelInfo},
	{"became candidate", logger.INFO, slog.LevelInfo},
	{"sent RequestPreVote", logger.INFO, slog.LevelInfo},
	{"sent RequestVote", logger.INFO, slog.LevelInfo},
	{"received %s rejection from", logger.INFO, slog.LevelInfo},
	{"received %s from", logger.INFO, slog.LevelInfo},
	{"with higher term", logger.INFO, slog.LevelInfo},
	{"become followerKE", logger.INFO, slog.LevelInfo},
	{"become follower after", logger.INFO, slog.LevelInfo},
	{"cast preVote", logger.INFO, slog.LevelInfo},
	{"rejected preVote", logger.INFO, slog.LevelInfo},
	{"cast vote", logger.INFO, slog.LevelInfo},
	{"rejected vote", logger.INFO, slog.LevelInfo},
	{"votes and %d rejections", logger.INFO, slog.LevelInfo},
	{"preVotes and %d rejections", logger.INFO, slog.LevelInfo},
	{"dropped RequestVote at term", logger.INFO, slog.LevelInfo},
	{"campaign skipped, pending config change", logger.INFO, slog.LevelInfo},
}
