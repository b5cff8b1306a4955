package relay

import (
	"syscall"
	"unsafe"
)

// tcpINQ is Linux's TCP_INQ socket option (and its control message type,
// TCP_CM_INQ): each recvmsg(2) then says how much the socket still holds,
// and a held FIN counts as one byte.
const tcpINQ = 36

// enableINQ turns TCP_INQ on for the TCP socket fd and reports whether it
// is on.
func enableINQ(fd int) bool {
	return syscall.SetsockoptInt(fd, syscall.IPPROTO_TCP, tcpINQ, 1) == nil
}

// inqReader is the one receive of the relay: recvmsg(2) with TCP_INQ's
// control message, or read(2) on a socket without TCP_INQ. Its message
// header is reused for every call; it holds no buffer between calls.
type inqReader struct {
	msg syscall.Msghdr
	iov syscall.Iovec
	oob [syscall.SizeofCmsghdr + 8]byte
}

// recv reads once from the non-blocking socket fd into b (len(b) > 0),
// through RawSyscall: it never waits. n == 0 with e == 0 is the end of the
// stream. left reports whether the socket may hold more: always, unless
// TCP_INQ (inq) says it holds nothing now (no data, no FIN). EINTR is
// retried; EAGAIN and every other errno are returned.
func (r *inqReader) recv(fd int, b []byte, inq bool) (n int, left bool, e syscall.Errno) {
	for {
		var ret uintptr
		if inq {
			r.iov.Base = &b[0]
			r.iov.SetLen(len(b))
			r.msg.Iov = &r.iov
			r.msg.Iovlen = 1
			r.msg.Control = &r.oob[0]
			r.msg.SetControllen(len(r.oob))
			r.msg.Flags = 0
			ret, _, e = syscall.RawSyscall(syscall.SYS_RECVMSG, uintptr(fd), uintptr(unsafe.Pointer(&r.msg)), 0)
			r.iov.Base = nil // hold no buffer while parked
		} else {
			ret, _, e = syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		}
		if e == syscall.EINTR {
			continue
		}
		if e != 0 {
			return 0, true, e
		}
		n, left = int(ret), true
		if inq && n > 0 && r.msg.Controllen >= syscall.SizeofCmsghdr+4 {
			h := (*syscall.Cmsghdr)(unsafe.Pointer(&r.oob[0]))
			if h.Level == syscall.IPPROTO_TCP && h.Type == tcpINQ {
				left = *(*int32)(unsafe.Pointer(&r.oob[syscall.SizeofCmsghdr])) > 0
			}
		}
		return n, left, 0
	}
}

// call names recv's system call, for errors.
func (r *inqReader) call(inq bool) string {
	if inq {
		return "recvmsg"
	}
	return "read"
}
