#!/usr/bin/python3
"""A disk that keeps only what was synced: the file system of the power-loss test.

    disk.py IMAGE MOUNTPOINT

Mounts an in-memory file system (FUSE) at MOUNTPOINT whose *durable* part is IMAGE, a file
on the real disk. Processes see every write at once, as through a page cache, but the image
takes in only what a sync made durable, as a disk behind a volatile cache would:

* fsync/fdatasync of a file makes its contents durable (not its name);
* fsync of a directory makes its entries durable: names created, renamed or removed in it
  (a file whose contents were never synced comes back empty);
* an unsynced write into a file whose contents are on the image may reach it torn, as
  write-back in progress at a power cut leaves it: about one write in three puts a random
  subset of its 512-byte sectors into the image at once (a program that rewrites a file in
  place must tell a torn version from a whole one);
* nothing else reaches the image: writes, creations, renames and removals that no sync
  covered are lost.

The image is replaced (written and renamed) before a sync returns, so killing this process
with SIGKILL at any instant is a power cut: what the image holds is exactly what the
synced-before-the-cut rule keeps, and every later operation on the mount fails (ENOTCONN).
Mounting the same image again is the reboot. This is the most pessimistic disk a POSIX
program may assume; a real one keeps fewer torn sectors, and more of what was not synced.

Needs root (mounts without fusermount) and Debian's python3-fusepy (scripts/setup.sh).
"""

import errno
import os
import pickle
import random
import stat
import sys
import threading
import time

import fusepy as fuse

ROOT = 1
# How often an unsynced write reaches the image torn, and the size of what a disk writes
# whole.
TORN_WRITE_CHANCE = 0.3
SECTOR = 512


def fail(code):
    raise fuse.FuseOSError(code)


class Node:
    """A live inode: a file's bytes or a directory's entries (name -> inode)."""

    __slots__ = ("kind", "data", "entries", "mode", "mtime")

    def __init__(self, kind, mode, data=b"", entries=None):
        self.kind = kind
        self.mode = mode
        self.data = bytearray(data)
        self.entries = dict(entries or {})
        self.mtime = time.time()


class Disk(fuse.Operations):
    def __init__(self, image):
        self.image = image
        self.mutex = threading.Lock()
        self.live, self.handles, self.next_fh = {}, {}, 1
        # The durable inodes: ino -> ("f", bytes, mode) | ("d", {name: ino}, mode).
        if os.path.exists(image):
            with open(image, "rb") as f:
                saved = pickle.load(f)
            self.durable, self.next_ino = saved["inodes"], saved["next"]
        else:
            self.durable, self.next_ino = {ROOT: ("d", {}, 0o700)}, ROOT + 1
            self.save()
        # After a reboot the live file system is the durable one, reachable from the root
        # (an inode no durable directory names is gone).
        self.live = {}
        pending = [ROOT]
        while pending:
            ino = pending.pop()
            kind, content, mode = self.durable[ino]
            if kind == "d":
                self.live[ino] = Node("d", mode, entries=content)
                pending.extend(content.values())
            else:
                self.live[ino] = Node("f", mode, data=content)

    def reachable(self, entries_of):
        """The inodes reachable from the root through `entries_of(ino)` (None: a file)."""
        seen, pending = set(), [ROOT]
        while pending:
            ino = pending.pop()
            if ino in seen:
                continue
            seen.add(ino)
            pending.extend(entries_of(ino) or ())
        return seen

    def collect(self):
        """Forgets inodes nothing can reach any more: neither the disk's directories, nor the
        live ones, nor an open handle (a synced file not yet named durably must stay)."""
        live = self.reachable(
            lambda i: self.live[i].entries.values() if self.live[i].kind == "d" else None)
        live |= set(self.handles.values())
        durable = self.reachable(
            lambda i: self.durable[i][1].values() if self.durable[i][0] == "d" else None)
        self.durable = {i: v for i, v in self.durable.items() if i in durable or i in live}
        self.live = {i: n for i, n in self.live.items() if i in live}

    def save(self):
        if self.live:
            self.collect()
        tmp = self.image + ".new"
        with open(tmp, "wb") as f:
            pickle.dump({"inodes": self.durable, "next": self.next_ino}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.image)

    # -- lookup -------------------------------------------------------------------------

    def resolve(self, path):
        ino = ROOT
        for name in [p for p in path.split("/") if p]:
            node = self.live[ino]
            if node.kind != "d":
                fail(errno.ENOTDIR)
            if name not in node.entries:
                fail(errno.ENOENT)
            ino = node.entries[name]
        return ino

    def parent(self, path):
        head, name = os.path.split(path.rstrip("/"))
        ino = self.resolve(head)
        if self.live[ino].kind != "d":
            fail(errno.ENOTDIR)
        return ino, name

    def new_node(self, path, node):
        parent, name = self.parent(path)
        entries = self.live[parent].entries
        if name in entries:
            fail(errno.EEXIST)
        ino = self.next_ino
        self.next_ino += 1
        self.live[ino] = node
        entries[name] = ino
        self.live[parent].mtime = time.time()
        return ino

    def open_handle(self, ino):
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = ino
        return fh

    def node_of(self, path, fh):
        ino = self.handles.get(fh) if fh else None
        return self.live[ino if ino is not None else self.resolve(path)]

    # -- attributes and directories -------------------------------------------------------

    def getattr(self, path, fh=None):
        with self.mutex:
            ino = self.handles.get(fh) if fh else None
            if ino is None:
                ino = self.resolve(path)
            node = self.live[ino]
            kind = stat.S_IFDIR if node.kind == "d" else stat.S_IFREG
            size = len(node.data) if node.kind == "f" else 4096
            return {
                "st_ino": ino,
                "st_mode": kind | node.mode,
                "st_nlink": 2 if node.kind == "d" else 1,
                "st_size": size,
                "st_uid": os.getuid(),
                "st_gid": os.getgid(),
                "st_atime": node.mtime,
                "st_mtime": node.mtime,
                "st_ctime": node.mtime,
            }

    def readdir(self, path, fh):
        with self.mutex:
            node = self.live[self.resolve(path)]
            if node.kind != "d":
                fail(errno.ENOTDIR)
            return [".", ".."] + list(node.entries)

    def mkdir(self, path, mode):
        with self.mutex:
            self.new_node(path, Node("d", mode & 0o7777))

    def entry(self, path):
        """The parent directory's inode, the name in it and the inode of `path`, which must
        exist (ENOENT). Call with the mutex held."""
        parent, name = self.parent(path)
        ino = self.live[parent].entries.get(name)
        if ino is None:
            fail(errno.ENOENT)
        return parent, name, ino

    def rmdir(self, path):
        with self.mutex:
            parent, name, ino = self.entry(path)
            if self.live[ino].kind != "d":
                fail(errno.ENOTDIR)
            if self.live[ino].entries:
                fail(errno.ENOTEMPTY)
            del self.live[parent].entries[name]

    def unlink(self, path):
        with self.mutex:
            parent, name, ino = self.entry(path)
            if self.live[ino].kind == "d":
                fail(errno.EISDIR)
            del self.live[parent].entries[name]

    def rename(self, old, new):
        with self.mutex:
            old_parent, old_name = self.parent(old)
            new_parent, new_name = self.parent(new)
            ino = self.live[old_parent].entries.get(old_name)
            if ino is None:
                fail(errno.ENOENT)
            target = self.live[new_parent].entries.get(new_name)
            if target is not None and self.live[target].kind == "d":
                if self.live[ino].kind != "d":
                    fail(errno.EISDIR)
                if self.live[target].entries:
                    fail(errno.ENOTEMPTY)
            del self.live[old_parent].entries[old_name]
            self.live[new_parent].entries[new_name] = ino

    def chmod(self, path, mode):
        with self.mutex:
            self.live[self.resolve(path)].mode = mode & 0o7777

    def chown(self, path, uid, gid):
        return 0

    def utimens(self, path, times=None):
        with self.mutex:
            self.live[self.resolve(path)].mtime = time.time()

    def statfs(self, path):
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 1 << 20, "f_bfree": 1 << 19,
                "f_bavail": 1 << 19, "f_files": 1 << 16, "f_ffree": 1 << 15, "f_namemax": 255}

    # -- files ----------------------------------------------------------------------------

    def create(self, path, mode, fi=None):
        with self.mutex:
            ino = self.new_node(path, Node("f", mode & 0o7777))
            return self.open_handle(ino)

    def open(self, path, flags):
        with self.mutex:
            ino = self.resolve(path)
            if flags & os.O_TRUNC:
                self.live[ino].data = bytearray()
            return self.open_handle(ino)

    def opendir(self, path):
        with self.mutex:
            return self.open_handle(self.resolve(path))

    def read(self, path, size, offset, fh):
        with self.mutex:
            return bytes(self.node_of(path, fh).data[offset:offset + size])

    def write(self, path, data, offset, fh):
        with self.mutex:
            node = self.node_of(path, fh)
            if offset > len(node.data):
                node.data.extend(b"\0" * (offset - len(node.data)))
            node.data[offset:offset + len(data)] = data
            node.mtime = time.time()
            self.write_back_torn(self.handles.get(fh) if fh else self.resolve(path),
                                 data, offset)
            return len(data)

    def truncate(self, path, length, fh=None):
        with self.mutex:
            node = self.node_of(path, fh)
            del node.data[length:]
            node.data.extend(b"\0" * (length - len(node.data)))

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        with self.mutex:
            self.handles.pop(fh, None)
        return 0

    def releasedir(self, path, fh):
        return self.release(path, fh)

    # -- what reaches the disk --------------------------------------------------------------

    def fsync(self, path, datasync, fh):
        with self.mutex:
            ino = self.handles.get(fh)
            if ino is None:
                ino = self.resolve(path)
            self.sync_inode(ino)
            self.save()
        return 0

    def fsyncdir(self, path, datasync, fh):
        return self.fsync(path, datasync, fh)

    def write_back_torn(self, ino, data, offset):
        """Sometimes puts a random subset of the sectors of an unsynced write into the image,
        over the file's durable contents (if it has any)."""
        durable = self.durable.get(ino)
        if durable is None or durable[0] != "f" or random.random() >= TORN_WRITE_CHANCE:
            return
        content = bytearray(durable[1])
        for start in range(0, len(data), SECTOR):
            if random.random() < 0.5:
                at = offset + start
                piece = data[start:start + SECTOR]
                if at > len(content):
                    content.extend(b"\0" * (at - len(content)))
                content[at:at + len(piece)] = piece
        self.durable[ino] = ("f", bytes(content), durable[2])
        self.save()

    def sync_inode(self, ino):
        node = self.live[ino]
        if node.kind == "f":
            self.durable[ino] = ("f", bytes(node.data), node.mode)
            return
        self.durable[ino] = ("d", dict(node.entries), node.mode)
        # A name made durable whose inode never was: an empty file (or directory) on disk.
        for child in node.entries.values():
            if child not in self.durable:
                kind = self.live[child].kind
                self.durable[child] = (kind, {} if kind == "d" else b"", self.live[child].mode)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    image, mountpoint = sys.argv[1], sys.argv[2]
    fuse.FUSE(Disk(image), mountpoint, foreground=True, nothreads=True, use_ino=True,
              default_permissions=True, fsname="powerloss")


if __name__ == "__main__":
    main()
