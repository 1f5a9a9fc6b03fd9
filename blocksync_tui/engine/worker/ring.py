"""Provides Ring: chunk data between a worker and its controller on one host, in shared memory.

A pipe costs each end a kernel copy of every byte (0.4-1.2 CPU-s per GiB per side, measured).
So the controller offers a local worker two memory files in HELLO, one each way; a large DATA
or WRITE payload is copied into one and only its header goes down the pipe, marked
protocol.FRAME_SHARED. Both ends take payloads in header order, each keeping its own position
(bytes since the start, modulo the size), and the taker gives space back with RELEASE frames.
README.md, "Shared memory with a worker on this host", has the whole story.
"""

import mmap
import os
import stat
import threading

SIZE = 32 << 20
"""The ring's size: two 16 MiB chunks in flight, or many smaller ones."""
MIN_PAYLOAD = 64 << 10
"""Smaller payloads go down the pipe: the copy would save less than the bookkeeping costs."""
RELEASE_EVERY = SIZE // 8
"""The controller gives space back once this much is taken and not yet released."""


class Ring:
    """One end's view of the shared circular buffer."""

    def __init__(self, memory: mmap.mmap) -> None:
        self.memory = memory
        self.view = memoryview(memory)
        self.size = len(memory)
        self.head = 0
        """Bytes put (producer) or taken (consumer) since the start."""
        self.released = 0
        """Bytes the consumer has given back (the producer's count, or what the consumer sent)."""
        self.cond = threading.Condition()
        self.abandoned = False
        """The other end has gone: a put waiting for space gives up."""

    def fits(self, length: int) -> bool:
        """Whether a payload of `length` bytes goes through the ring (at most half of it, so a
        batch of releases always frees room for the next)."""
        return MIN_PAYLOAD <= length <= self.size // 2

    # -- producer

    def put(self, views: list, length: int) -> None:
        """Copy `views` (`length` bytes in all) in at the head, once that much is free.

        Raises:
            EOFError: the ring was abandoned (its taker has gone).
        """
        with self.cond:
            while self.size - (self.head - self.released) < length:
                if self.abandoned:
                    raise EOFError("the other end of the shared ring has gone")
                self.cond.wait()
        at = self.head % self.size
        for view in views:
            n = len(view)
            first = min(n, self.size - at)
            self.view[at : at + first] = view[:first]
            if first < n:
                self.view[: n - first] = view[first:]
            at = (at + n) % self.size
        with self.cond:
            self.head += length

    def release(self, upto: int) -> None:
        """The consumer has taken everything before position `upto`.

        Raises:
            ValueError: a position behind the last one released or beyond what was put.
        """
        with self.cond:
            if not self.released <= upto <= self.head:
                raise ValueError("release to %d outside %d..%d" % (upto, self.released, self.head))
            self.released = upto
            self.cond.notify_all()

    def abandon(self) -> None:
        """Wake a put waiting for space that will never come."""
        with self.cond:
            self.abandoned = True
            self.cond.notify_all()

    # -- consumer

    def take(self, length: int) -> bytes:
        """Copy out the next payload of `length` bytes.

        Raises:
            ValueError: a length the producer could not have put (more than half the ring).
        """
        if not 0 < length <= self.size // 2:
            raise ValueError("a shared-memory frame of %d bytes, in a ring of %d" % (length, self.size))
        at = self.head % self.size
        first = min(length, self.size - at)
        data = bytes(self.view[at : at + first])
        if first < length:
            data += self.view[: length - first]
        self.head += length
        return data

    def due_release(self) -> int:
        """The position to give back now, or 0 while too little has been taken."""
        if self.head - self.released < RELEASE_EVERY:
            return 0
        self.released = self.head
        return self.head

    def close(self) -> None:
        self.view.release()
        self.memory.close()


def create(size: int = SIZE) -> "tuple[Ring, int]":
    """A new ring in an anonymous memory file (the controller's end) and the file's descriptor,
    to offer as /proc/<pid>/fd/<fd> (`offer`) and close once the worker has answered.

    Raises:
        OSError: no memfd here (not Linux), or no memory.
    """
    fd = os.memfd_create("blocksync-ring", os.MFD_CLOEXEC)
    try:
        os.ftruncate(fd, size)
        memory = mmap.mmap(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return Ring(memory), fd


def offer(ring: Ring, fd: int) -> dict:
    """How HELLO names a ring to the worker."""
    return {"path": "/proc/%d/fd/%d" % (os.getpid(), fd), "size": ring.size}


def attach(path: str, size: int) -> Ring:
    """The worker's end of the ring the controller offered.

    Raises:
        OSError: it cannot be opened or mapped.
        ValueError: it is not a memory file of the size offered.
    """
    if not isinstance(path, str) or not isinstance(size, int) or not MIN_PAYLOAD * 2 <= size <= 1 << 30:
        raise ValueError("a shared ring of %r bytes at %r" % (size, path))
    fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)  # the file opened, not the path: its size is what gets mapped
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            raise ValueError("the shared ring is not a memory file of %d bytes" % size)
        return Ring(mmap.mmap(fd, size))
    finally:
        os.close(fd)
