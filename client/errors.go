package client

import (
	"errors"

	"github.com/blixard/blixard/proto/blixardpb"
)

// Sentinels for the codes of blixardpb.Code; an *Error matches the one of
// its code with errors.Is.
var (
	ErrInvalidArgument    = errors.New("invalid argument")
	ErrAlreadyExists      = errors.New("already exists")
	ErrNotFound           = errors.New("not found")
	ErrResourceExhausted  = errors.New("resource exhausted")
	ErrFailedPrecondition = errors.New("failed precondition")
	ErrUnavailable        = errors.New("unavailable")
	ErrDeadlineExceeded   = errors.New("deadline exceeded")
	ErrInternal           = errors.New("internal error")
)

var sentinels = map[blixardpb.Code]error{
	blixardpb.Code_INVALID_ARGUMENT:    ErrInvalidArgument,
	blixardpb.Code_ALREADY_EXISTS:      ErrAlreadyExists,
	blixardpb.Code_NOT_FOUND:           ErrNotFound,
	blixardpb.Code_RESOURCE_EXHAUSTED:  ErrResourceExhausted,
	blixardpb.Code_FAILED_PRECONDITION: ErrFailedPrecondition,
	blixardpb.Code_UNAVAILABLE:         ErrUnavailable,
	blixardpb.Code_DEADLINE_EXCEEDED:   ErrDeadlineExceeded,
	blixardpb.Code_INTERNAL:            ErrInternal,
}

// Error is a failure reported by the cluster (or, for UNAVAILABLE and
// DEADLINE_EXCEEDED, by the client when no node answered in time).
type Error struct {
	Code    blixardpb.Code
	Message string
}

func (e *Error) Error() string {
	if e.Message == "" {
		if s, ok := sentinels[e.Code]; ok {
			return s.Error()
		}
		return e.Code.String()
	}
	return e.Message
}

// Is reports whether target is the sentinel of e's code.
func (e *Error) Is(target error) bool {
	s, ok := sentinels[e.Code]
	return ok && s == target
}

// fromProto converts a response error; nil or OK yields nil.
func fromProto(pe *blixardpb.Error) error {
	if pe == nil || pe.GetCode() == blixardpb.Code_OK {
		return nil
	}
	return &Error{Code: pe.GetCode(), Message: pe.GetMessage()}
}

// CodeOf returns the code of err: OK for nil, the code of an *Error in its
// chain, DEADLINE_EXCEEDED for context deadlines, INTERNAL otherwise.
func CodeOf(err error) blixardpb.Code {
	if err == nil {
		return blixardpb.Code_OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return blixardpb.Code_INTERNAL
}
