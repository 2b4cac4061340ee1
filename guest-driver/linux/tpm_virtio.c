// SPDX-License-Identifier: GPL-2.0
/*
 * TPM 2.0 over virtio.
 *
 * Copyright (C) vhost-vtpm developers
 *
 * The device (virtio device id 62 unless the device_id parameter says
 * otherwise) has a single request virtqueue and a 4-byte config space
 * holding le32 max_buffer_size.  One request is one descriptor chain: the
 * complete TPM command in device-readable buffers, followed by
 * device-writable buffers of at least max_buffer_size bytes.  The device
 * answers by returning the chain with the used length set to the number of
 * response bytes it wrote (0 means it refused a malformed chain).
 *
 * Buffer ownership, and why a timeout cannot corrupt memory
 * ---------------------------------------------------------
 * The TPM core hands us its own buffer in send() and expects the response
 * in recv().  We never give that buffer to the device.  Each transfer uses a
 * struct vtpm_req owned by this driver: the command is copied into req->cmd
 * and the device writes into req->rsp.  From virtqueue_add_sgs() until the
 * buffer comes back through virtqueue_get_buf(), the request belongs to the
 * device and nothing else touches it.
 *
 * If the device does not answer in time (or the waiting task is killed), the
 * request is "stranded": under the queue lock it stops being the in-flight
 * request, moves to the stranded list, and the driver forgets it as its
 * working request (the next transfer allocates a fresh one).  When the device
 * eventually returns a stranded request, the virtqueue callback sees a token
 * that is not the in-flight one, unlinks it and frees it; it never completes
 * the waiter and never copies anything.  A completion racing with the
 * timeout is decided under the same lock: whoever clears ->inflight first
 * wins, so a response is either delivered exactly once or discarded.
 * Stranded requests that the device never returns are reclaimed after the
 * device has been reset (remove, freeze, failed probe), when the device can
 * no longer write to them.  Stranded requests keep their ring slots, so a
 * device that stops answering eventually makes new transfers fail with
 * -EBUSY instead of consuming more memory.
 *
 * The TPM core is told that completion is signalled (TPM_CHIP_FLAG_IRQ),
 * which makes it call recv() right after send() returns: send() therefore
 * waits for the completion, bounded by tpm_calc_ordinal_duration() (never
 * less than min_timeout_ms).
 *
 * Completion polling
 * ------------------
 * Most TPM commands take the device a few microseconds; what the guest pays
 * on top is wake-ups: the device's interrupt, and the halted vCPU's.  So
 * after the kick, send() first polls the used ring, with the queue's
 * interrupts suppressed (virtqueue_disable_cb), for a short window; only a
 * command still outstanding after it re-enables the interrupt and sleeps.
 * The window adapts (as NAPI and virtio-blk poll queues bound their own): it
 * follows twice the latency recently seen, within poll_us, so slow commands
 * (key generation, RSA) stop burning the vCPU; a window that expired without
 * the answer makes the next commands sleep at once, for a number of commands
 * that doubles with each further miss, until a poll succeeds again.  The
 * poll also stops when the scheduler wants the CPU or a fatal signal is
 * pending, and never outlasts the command's timeout.  poll_us=0 turns it
 * off.  The polled path and the interrupt path reap the ring under the same
 * lock, so an interrupt that arrives anyway (suppression is only a hint)
 * changes nothing.  Counters in sysfs (polled_completions,
 * slept_completions, poll_window_ns on the virtio device) say which path
 * served.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/completion.h>
#include <linux/device.h>
#include <linux/jiffies.h>
#include <linux/kernel.h>
#include <linux/ktime.h>
#include <linux/list.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/sysfs.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>

#include "tpm.h"

/*
 * The virtio TC has not assigned the TPM a device id yet.  62 is the id
 * crosvm gives its own TPM device; the device_id parameter selects another.
 */
#define VTPM_DEFAULT_DEVICE_ID	62
/* Upper bound on max_buffer_size; each request buffer is kmalloc'ed. */
#define VTPM_MAX_BUFFER		(64u * 1024u)
/* The adaptive window never starts below this, so that a fast command is caught. */
#define VTPM_POLL_MIN_NS	(20 * NSEC_PER_USEC)
/* Commands that sleep at once after a poll missed, at the most. */
#define VTPM_POLL_MAX_SKIP	1024u

/**
 * struct virtio_tpm_config - device configuration space
 * @max_buffer_size: largest command, and room the driver gives each
 *                   response, in bytes
 */
struct virtio_tpm_config {
	__le32 max_buffer_size;
} __packed;

static unsigned int device_id = VTPM_DEFAULT_DEVICE_ID;
module_param(device_id, uint, 0444);
MODULE_PARM_DESC(device_id,
		 "virtio device id of the TPM device (default 62)");

static unsigned int min_timeout_ms = 2000;
module_param(min_timeout_ms, uint, 0644);
MODULE_PARM_DESC(min_timeout_ms,
		 "lower bound in ms on the per-command timeout derived from the TPM duration classes (default 2000)");

static unsigned int poll_us = 200;
module_param(poll_us, uint, 0644);
MODULE_PARM_DESC(poll_us,
		 "longest time in us a command's completion is polled for, interrupts suppressed, before sleeping on the interrupt; the window adapts below it (0: never poll; default 200)");

/**
 * struct vtpm_req - the buffers of one transfer
 * @node: entry on &vtpm.stranded while the request is abandoned
 * @cmd:  command, device-readable
 * @rsp:  response, device-writable, &vtpm.buf_size bytes
 */
struct vtpm_req {
	struct list_head node;
	u8 *cmd;
	u8 *rsp;
};

/**
 * struct vtpm - driver state of one virtio TPM device
 * @vdev:         the virtio device
 * @vq:           the request queue; NULL while the device is frozen
 * @chip:         the TPM chip registered with the TPM core
 * @buf_size:     the device's max_buffer_size
 * @xfer_lock:    serialises transfers (send/recv and the TPM2_Startup issued
 *                after a restore) and the ready transitions done on freeze;
 *                protects @req, @rsp_len, @rsp_pending and the polling state
 * @req:          working request, NULL after it was stranded
 * @rsp_len:      used length of the last completed transfer
 * @rsp_pending:  send() succeeded, the response has not been taken yet
 * @poll_window_ns: current polling window, at most poll_us
 * @poll_skip:    commands left that sleep without polling
 * @poll_backoff: next @poll_skip after a miss
 * @polled:       transfers completed by polling (sysfs)
 * @slept:        transfers completed by the interrupt (sysfs)
 * @lock:         protects the virtqueue, @ready, @inflight, @used_len and
 *                the stranded list; taken from the virtqueue callback
 * @ready:        the queue is usable
 * @inflight:     the request a waiter expects back
 * @used_len:     used length the device reported for @inflight
 * @done:         completed when @inflight comes back
 * @stranded:     requests given up on that the device still holds
 * @nr_stranded:  length of @stranded
 */
struct vtpm {
	struct virtio_device *vdev;
	struct virtqueue *vq;
	struct tpm_chip *chip;
	u32 buf_size;

	struct mutex xfer_lock; /* see the kernel-doc above */
	struct vtpm_req *req;
	u32 rsp_len;
	bool rsp_pending;
	u64 poll_window_ns;
	unsigned int poll_skip;
	unsigned int poll_backoff;

	atomic64_t polled;
	atomic64_t slept;

	spinlock_t lock; /* see the kernel-doc above */
	bool ready;
	struct vtpm_req *inflight;
	u32 used_len;
	struct completion done;
	struct list_head stranded;
	unsigned int nr_stranded;
};

/* Not const: the first entry's device id is set from device_id at load. */
static struct virtio_device_id vtpm_id_table[] = {
	{ VTPM_DEFAULT_DEVICE_ID, VIRTIO_DEV_ANY_ID },
	{ 0 },
};
MODULE_DEVICE_TABLE(virtio, vtpm_id_table);

static void vtpm_req_free(struct vtpm_req *req)
{
	if (!req)
		return;
	kfree(req->cmd);
	kfree(req->rsp);
	kfree(req);
}

static struct vtpm_req *vtpm_req_alloc(u32 size)
{
	struct vtpm_req *req = kzalloc(sizeof(*req), GFP_KERNEL);

	if (!req)
		return NULL;
	INIT_LIST_HEAD(&req->node);
	req->cmd = kmalloc(size, GFP_KERNEL);
	req->rsp = kmalloc(size, GFP_KERNEL);
	if (!req->cmd || !req->rsp) {
		vtpm_req_free(req);
		return NULL;
	}
	return req;
}

static void vtpm_set_ready(struct vtpm *v, bool ready)
{
	unsigned long flags;

	spin_lock_irqsave(&v->lock, flags);
	v->ready = ready;
	spin_unlock_irqrestore(&v->lock, flags);
}

/**
 * vtpm_reap_locked() - take every used buffer off the ring
 * @v: the device
 *
 * The in-flight request completes its waiter; a stranded one is freed.
 * Called from the virtqueue callback and from the polling sender.
 *
 * Context: @v->lock held.
 */
static void vtpm_reap_locked(struct vtpm *v)
{
	struct vtpm_req *req;
	unsigned int len;

	lockdep_assert_held(&v->lock);

	while ((req = virtqueue_get_buf(v->vq, &len))) {
		if (req == v->inflight) {
			v->inflight = NULL;
			v->used_len = len;
			complete(&v->done);
			continue;
		}
		/*
		 * A request given up on earlier.  The device has finished
		 * with it, so it is ours again: drop it.
		 */
		list_del(&req->node);
		v->nr_stranded--;
		vtpm_req_free(req);
		dev_info_ratelimited(&v->vdev->dev,
				     "late response to an abandoned command discarded (%u still outstanding)\n",
				     v->nr_stranded);
	}
}

/* Virtqueue callback; runs in interrupt context. */
static void vtpm_vq_done(struct virtqueue *vq)
{
	struct vtpm *v = vq->vdev->priv;
	unsigned long flags;

	spin_lock_irqsave(&v->lock, flags);
	vtpm_reap_locked(v);
	spin_unlock_irqrestore(&v->lock, flags);
}

/**
 * vtpm_poll_window() - how long to poll for the next command's completion
 * @v:       the device
 * @timeout: the command's timeout, in jiffies
 *
 * Context: @v->xfer_lock held.
 * Return: the window in ns; 0 to sleep on the interrupt at once.
 */
static u64 vtpm_poll_window(struct vtpm *v, unsigned long timeout)
{
	u64 cap = (u64)READ_ONCE(poll_us) * NSEC_PER_USEC;

	if (!cap)
		return 0;
	if (v->poll_skip) {
		v->poll_skip--;
		return 0;
	}
	cap = min_t(u64, cap, jiffies_to_nsecs(timeout));
	if (!v->poll_window_ns)
		v->poll_window_ns = cap;
	return min(v->poll_window_ns, cap);
}

/**
 * vtpm_poll_learn() - adapt the polling window to a finished transfer
 * @v:          the device
 * @window_ns:  the window polled for, 0 if the transfer did not poll
 * @polled:     the poll caught the completion
 * @elapsed_ns: how long the transfer took
 *
 * Context: @v->xfer_lock held.
 */
static void vtpm_poll_learn(struct vtpm *v, u64 window_ns, bool polled,
			    u64 elapsed_ns)
{
	u64 cap = (u64)READ_ONCE(poll_us) * NSEC_PER_USEC;
	u64 want = clamp_t(u64, 2 * elapsed_ns, VTPM_POLL_MIN_NS, cap);

	if (polled) {
		atomic64_inc(&v->polled);
		v->poll_backoff = 0;
		/* Follow the latency seen, up or down, within the cap. */
		v->poll_window_ns = want;
		return;
	}
	atomic64_inc(&v->slept);
	if (!window_ns) {
		/* Slept without polling: a fast answer is worth polling for. */
		if (elapsed_ns <= cap / 2)
			v->poll_window_ns = want;
		return;
	}
	/* The window expired: back off, longer after each miss in a row. */
	v->poll_backoff = v->poll_backoff ?
		min(2 * v->poll_backoff, VTPM_POLL_MAX_SKIP) : 1;
	v->poll_skip = v->poll_backoff;
	v->poll_window_ns = want;
}

/**
 * vtpm_poll_completion() - busy-poll the used ring for a request
 * @v:         the device
 * @req:       the request in flight
 * @window_ns: how long to poll for
 *
 * The caller has suppressed the queue's interrupts.  The poll stops early
 * when the scheduler wants the CPU or a fatal signal is pending.
 *
 * Return: true if @req completed.
 */
static bool vtpm_poll_completion(struct vtpm *v, struct vtpm_req *req,
				 u64 window_ns)
{
	u64 deadline = ktime_get_ns() + window_ns;
	unsigned long flags;
	bool done;

	for (;;) {
		spin_lock_irqsave(&v->lock, flags);
		vtpm_reap_locked(v);
		done = v->inflight != req;
		spin_unlock_irqrestore(&v->lock, flags);
		if (done)
			return true;
		if (ktime_get_ns() >= deadline || need_resched() ||
		    fatal_signal_pending(current))
			return false;
		cpu_relax();
	}
}

/**
 * vtpm_strand_locked() - leave an unanswered request to the device
 * @v:   the device
 * @req: the request, still owned by the device
 *
 * See "Buffer ownership" at the top of this file.
 *
 * Context: @v->lock held.
 */
static void vtpm_strand_locked(struct vtpm *v, struct vtpm_req *req)
{
	v->inflight = NULL;
	v->req = NULL;
	list_add_tail(&req->node, &v->stranded);
	v->nr_stranded++;
}

/**
 * vtpm_xfer() - run one command through the device
 * @v:       the device
 * @cmd:     the command
 * @len:     its length in bytes
 * @timeout: how long to wait for the response, in jiffies
 * @used:    set to the response length the device reported (unchecked)
 *
 * On success the response is in @v->req->rsp.
 *
 * Context: @v->xfer_lock held; sleeps.
 * Return: 0, or -ETIME (no response in time), -EINTR (fatal signal),
 * -EBUSY (queue full of stranded requests), -ENODEV (device not ready),
 * -EIO (notification failed), -EINVAL or -ENOMEM.
 */
static int vtpm_xfer(struct vtpm *v, const u8 *cmd, size_t len,
		     unsigned long timeout, u32 *used)
{
	struct scatterlist out, in, *sgs[2];
	struct vtpm_req *req;
	unsigned long flags;
	u64 window, start;
	bool kick, polled = false;
	long left = 1;
	int err;

	lockdep_assert_held(&v->xfer_lock);

	if (len < TPM_HEADER_SIZE || len > v->buf_size)
		return -EINVAL;

	req = v->req;
	if (!req) {
		req = vtpm_req_alloc(v->buf_size);
		if (!req)
			return -ENOMEM;
		v->req = req;
	}

	memcpy(req->cmd, cmd, len);
	/* Never let a short or lying device expose an older response. */
	memset(req->rsp, 0, v->buf_size);
	sg_init_one(&out, req->cmd, len);
	sg_init_one(&in, req->rsp, v->buf_size);
	sgs[0] = &out;
	sgs[1] = &in;

	/* No request is in flight, so nobody can complete() concurrently. */
	reinit_completion(&v->done);
	window = vtpm_poll_window(v, timeout);

	spin_lock_irqsave(&v->lock, flags);
	if (!v->ready) {
		spin_unlock_irqrestore(&v->lock, flags);
		return -ENODEV;
	}
	/* Polling: ask the device not to interrupt for this completion. */
	if (window)
		virtqueue_disable_cb(v->vq);
	err = virtqueue_add_sgs(v->vq, sgs, 1, 1, req, GFP_ATOMIC);
	if (err) {
		unsigned int stuck = v->nr_stranded;

		if (window && !virtqueue_enable_cb(v->vq))
			vtpm_reap_locked(v);
		spin_unlock_irqrestore(&v->lock, flags);
		if (err == -ENOSPC) {
			dev_err_ratelimited(&v->vdev->dev,
					    "request queue full (%u abandoned commands still held by the device)\n",
					    stuck);
			return -EBUSY;
		}
		return err;
	}
	v->inflight = req;
	kick = virtqueue_kick_prepare(v->vq);
	spin_unlock_irqrestore(&v->lock, flags);

	start = ktime_get_ns();
	if (kick && !virtqueue_notify(v->vq)) {
		/* The device is broken; the buffer stays with it until reset. */
		spin_lock_irqsave(&v->lock, flags);
		if (window && !virtqueue_enable_cb(v->vq))
			vtpm_reap_locked(v);
		if (v->inflight == req)
			vtpm_strand_locked(v, req);
		spin_unlock_irqrestore(&v->lock, flags);
		return -EIO;
	}

	if (window) {
		polled = vtpm_poll_completion(v, req, window);
		/*
		 * Interrupts back on; a completion that slipped in between is
		 * reaped here, so the sleep below cannot miss it.
		 */
		spin_lock_irqsave(&v->lock, flags);
		if (!virtqueue_enable_cb(v->vq))
			vtpm_reap_locked(v);
		spin_unlock_irqrestore(&v->lock, flags);
	}
	if (!polled) {
		unsigned long spent = nsecs_to_jiffies(ktime_get_ns() - start);

		left = wait_for_completion_killable_timeout(&v->done,
							    timeout > spent ?
							    timeout - spent : 1);
	}

	spin_lock_irqsave(&v->lock, flags);
	if (v->inflight == req) {
		/* Not answered: leave the request to the device. */
		vtpm_strand_locked(v, req);
		spin_unlock_irqrestore(&v->lock, flags);
		return left < 0 ? -EINTR : -ETIME;
	}
	/* Answered (possibly just after the wait timed out). */
	*used = v->used_len;
	spin_unlock_irqrestore(&v->lock, flags);
	vtpm_poll_learn(v, window, polled, ktime_get_ns() - start);
	return 0;
}

static unsigned long vtpm_timeout(struct tpm_chip *chip, u32 ordinal)
{
	unsigned long t = tpm_calc_ordinal_duration(chip, ordinal);
	unsigned long floor = msecs_to_jiffies(READ_ONCE(min_timeout_ms));

	return max(t, floor);
}

/**
 * vtpm_transmit_locked() - send a command from the TPM core
 * @v:   the device
 * @buf: the command
 * @len: its length in bytes
 *
 * On success the response waits in @v->req for vtpm_response_locked().
 *
 * Context: @v->xfer_lock held; sleeps.
 * Return: 0 or a negative errno (see vtpm_xfer(); -E2BIG for a command
 * larger than the device's buffer).
 */
static int vtpm_transmit_locked(struct vtpm *v, const u8 *buf, size_t len)
{
	const struct tpm_header *hdr = (const struct tpm_header *)buf;
	unsigned long timeout;
	u32 ordinal;
	int err;

	v->rsp_pending = false;
	if (len < TPM_HEADER_SIZE)
		return -EINVAL;
	if (len > v->buf_size) {
		dev_err_ratelimited(&v->vdev->dev,
				    "command of %zu bytes exceeds the device's %u-byte buffer\n",
				    len, v->buf_size);
		return -E2BIG;
	}

	ordinal = be32_to_cpu(hdr->ordinal);
	timeout = vtpm_timeout(v->chip, ordinal);

	err = vtpm_xfer(v, buf, len, timeout, &v->rsp_len);
	if (!err)
		v->rsp_pending = true;
	else if (err == -ETIME)
		dev_err_ratelimited(&v->vdev->dev,
				    "command 0x%08x: no response within %u ms; its buffers stay with the device\n",
				    ordinal, jiffies_to_msecs(timeout));
	else if (err == -EINTR)
		dev_warn_ratelimited(&v->vdev->dev,
				     "command 0x%08x: wait interrupted by a fatal signal; its buffers stay with the device\n",
				     ordinal);
	return err;
}

/**
 * vtpm_response_locked() - check the pending response and copy it out
 * @v:     the device
 * @buf:   the TPM core's buffer
 * @count: its size in bytes
 *
 * Context: @v->xfer_lock held.
 * Return: the response length, or a negative errno.
 */
static int vtpm_response_locked(struct vtpm *v, u8 *buf, size_t count)
{
	const struct tpm_header *hdr;
	u32 len;

	if (!v->rsp_pending || !v->req)
		return -EIO;
	v->rsp_pending = false;
	len = v->rsp_len;
	hdr = (const struct tpm_header *)v->req->rsp;

	if (len == 0) {
		dev_err_ratelimited(&v->vdev->dev,
				    "device rejected the request (used length 0)\n");
		return -EIO;
	}
	if (len > v->buf_size) {
		dev_err_ratelimited(&v->vdev->dev,
				    "device claims %u response bytes in a %u-byte buffer\n",
				    len, v->buf_size);
		return -EIO;
	}
	if (len < TPM_HEADER_SIZE || be32_to_cpu(hdr->length) != len) {
		dev_err_ratelimited(&v->vdev->dev,
				    "malformed response: %u bytes written, header says %u\n",
				    len,
				    len < TPM_HEADER_SIZE ? 0 : be32_to_cpu(hdr->length));
		return -EIO;
	}
	if (len > count) {
		dev_err_ratelimited(&v->vdev->dev,
				    "response of %u bytes does not fit the TPM core's %zu-byte buffer\n",
				    len, count);
		return -E2BIG;
	}
	memcpy(buf, v->req->rsp, len);
	return len;
}

#ifdef TPM_HAVE_CHIP_FLAG_SYNC
/**
 * vtpm_send() - run a command and return its response (TPM_CHIP_FLAG_SYNC)
 * @chip:   the TPM chip
 * @buf:    the command on entry, the response on return
 * @bufsiz: size of @buf in bytes
 * @len:    length of the command in bytes
 *
 * Return: the response length, or a negative errno.
 */
static int vtpm_send(struct tpm_chip *chip, u8 *buf, size_t bufsiz,
		     size_t len)
{
	struct vtpm *v = dev_get_drvdata(&chip->dev);
	int rc;

	mutex_lock(&v->xfer_lock);
	rc = vtpm_transmit_locked(v, buf, len);
	if (!rc)
		rc = vtpm_response_locked(v, buf, bufsiz);
	mutex_unlock(&v->xfer_lock);
	return rc;
}
#else
/**
 * vtpm_send() - run a command through the device
 * @chip: the TPM chip
 * @buf:  the command
 * @len:  its length in bytes
 *
 * Returns once the device has answered (the TPM core calls vtpm_recv() next,
 * TPM_CHIP_FLAG_IRQ), or failed to in time.
 *
 * Return: 0 or a negative errno.
 */
static int vtpm_send(struct tpm_chip *chip, u8 *buf, size_t len)
{
	struct vtpm *v = dev_get_drvdata(&chip->dev);
	int rc;

	mutex_lock(&v->xfer_lock);
	rc = vtpm_transmit_locked(v, buf, len);
	mutex_unlock(&v->xfer_lock);
	return rc;
}

/**
 * vtpm_recv() - copy out the response to the command vtpm_send() ran
 * @chip:  the TPM chip
 * @buf:   the TPM core's buffer
 * @count: its size in bytes
 *
 * Return: the response length, or a negative errno.
 */
static int vtpm_recv(struct tpm_chip *chip, u8 *buf, size_t count)
{
	struct vtpm *v = dev_get_drvdata(&chip->dev);
	int rc;

	mutex_lock(&v->xfer_lock);
	rc = vtpm_response_locked(v, buf, count);
	mutex_unlock(&v->xfer_lock);
	return rc;
}
#endif

/* Completion is signalled; these exist for completeness. */
static u8 vtpm_status(struct tpm_chip *chip)
{
	return 0;
}

static bool vtpm_req_canceled(struct tpm_chip *chip, u8 status)
{
	return false;
}

static void vtpm_cancel(struct tpm_chip *chip)
{
	/* A virtio request cannot be withdrawn once queued. */
}

static const struct tpm_class_ops vtpm_ops = {
	.flags = TPM_OPS_AUTO_STARTUP,
	.req_complete_mask = 0,
	.req_complete_val = 0,
	.req_canceled = vtpm_req_canceled,
	.send = vtpm_send,
#ifndef TPM_HAVE_CHIP_FLAG_SYNC
	.recv = vtpm_recv,
#endif
	.cancel = vtpm_cancel,
	.status = vtpm_status,
};

/*
 * Which completion path served, for operators and tests (see "Completion
 * polling" at the top of this file).
 */
static ssize_t polled_completions_show(struct device *dev,
				       struct device_attribute *attr, char *buf)
{
	struct vtpm *v = dev_to_virtio(dev)->priv;

	return sysfs_emit(buf, "%lld\n", (long long)atomic64_read(&v->polled));
}
static DEVICE_ATTR_RO(polled_completions);

static ssize_t slept_completions_show(struct device *dev,
				      struct device_attribute *attr, char *buf)
{
	struct vtpm *v = dev_to_virtio(dev)->priv;

	return sysfs_emit(buf, "%lld\n", (long long)atomic64_read(&v->slept));
}
static DEVICE_ATTR_RO(slept_completions);

static ssize_t poll_window_ns_show(struct device *dev,
				   struct device_attribute *attr, char *buf)
{
	struct vtpm *v = dev_to_virtio(dev)->priv;

	return sysfs_emit(buf, "%llu\n",
			  (unsigned long long)READ_ONCE(v->poll_window_ns));
}
static DEVICE_ATTR_RO(poll_window_ns);

static struct attribute *vtpm_attrs[] = {
	&dev_attr_polled_completions.attr,
	&dev_attr_slept_completions.attr,
	&dev_attr_poll_window_ns.attr,
	NULL,
};
ATTRIBUTE_GROUPS(vtpm);

/**
 * vtpm_read_buf_size() - read and check the device's max_buffer_size
 * @vdev: the virtio device
 * @size: set to max_buffer_size if it is usable
 *
 * Return: 0, or -EINVAL for a device without config space or with a
 * max_buffer_size outside [TPM_BUFSIZE, VTPM_MAX_BUFFER].
 */
static int vtpm_read_buf_size(struct virtio_device *vdev, u32 *size)
{
	u32 val;

	if (!vdev->config->get) {
		dev_err(&vdev->dev, "device has no config space; refusing it\n");
		return -EINVAL;
	}
	virtio_cread_le(vdev, struct virtio_tpm_config, max_buffer_size, &val);
	/* The TPM core sends commands of up to TPM_BUFSIZE bytes. */
	if (val < TPM_BUFSIZE) {
		dev_err(&vdev->dev,
			"max_buffer_size %u is below the %u bytes the TPM core may send; refusing the device\n",
			val, TPM_BUFSIZE);
		return -EINVAL;
	}
	if (val > VTPM_MAX_BUFFER) {
		dev_err(&vdev->dev,
			"max_buffer_size %u is above the %u bytes this driver supports; refusing the device\n",
			val, VTPM_MAX_BUFFER);
		return -EINVAL;
	}
	*size = val;
	return 0;
}

static int vtpm_init_vq(struct vtpm *v)
{
	struct virtqueue *vq;

	vq = virtio_find_single_vq(v->vdev, vtpm_vq_done, "requests");
	if (IS_ERR(vq))
		return PTR_ERR(vq);
	v->vq = vq;
	return 0;
}

/**
 * vtpm_release_vq() - tear down the queue of a device that has been reset
 * @v: the device
 *
 * After the reset the device no longer touches our buffers and no callback
 * runs, so stranded requests can be freed.
 */
static void vtpm_release_vq(struct vtpm *v)
{
	struct vtpm_req *req, *tmp;
	unsigned long flags;
	LIST_HEAD(dead);

	if (!v->vq)		/* e.g. a restore that failed earlier */
		return;

	spin_lock_irqsave(&v->lock, flags);
	/* The stranded list, not the tokens, says what is ours to free. */
	while (virtqueue_detach_unused_buf(v->vq))
		;
	list_splice_init(&v->stranded, &dead);
	v->nr_stranded = 0;
	v->inflight = NULL;
	spin_unlock_irqrestore(&v->lock, flags);

	list_for_each_entry_safe(req, tmp, &dead, node) {
		list_del(&req->node);
		vtpm_req_free(req);
	}
	v->vdev->config->del_vqs(v->vdev);
	v->vq = NULL;
}

static int vtpm_probe(struct virtio_device *vdev)
{
	struct device *dev = &vdev->dev;
	struct tpm_chip *chip;
	struct vtpm *v;
	u32 size;
	int err;

	err = vtpm_read_buf_size(vdev, &size);
	if (err)
		return err;

	v = devm_kzalloc(dev, sizeof(*v), GFP_KERNEL);
	if (!v)
		return -ENOMEM;
	v->vdev = vdev;
	v->buf_size = size;
	mutex_init(&v->xfer_lock);
	spin_lock_init(&v->lock);
	init_completion(&v->done);
	atomic64_set(&v->polled, 0);
	atomic64_set(&v->slept, 0);
	INIT_LIST_HEAD(&v->stranded);
	vdev->priv = v;

	/* Replaced by a fresh one whenever a request is stranded. */
	v->req = vtpm_req_alloc(size);
	if (!v->req) {
		err = -ENOMEM;
		goto err_priv;
	}

	err = vtpm_init_vq(v);
	if (err) {
		dev_err(dev, "cannot set up the request queue: %d\n", err);
		goto err_req;
	}

	/* Also makes the chip the drvdata of @dev, for tpm_pm_suspend(). */
	chip = tpmm_chip_alloc(dev, &vtpm_ops);
	if (IS_ERR(chip)) {
		err = PTR_ERR(chip);
		goto err_vq;
	}
	dev_set_drvdata(&chip->dev, v);
#ifdef TPM_HAVE_CHIP_FLAG_SYNC
	chip->flags |= TPM_CHIP_FLAG_TPM2 | TPM_CHIP_FLAG_SYNC;
#else
	chip->flags |= TPM_CHIP_FLAG_TPM2 | TPM_CHIP_FLAG_IRQ;
#endif
	v->chip = chip;

	virtio_device_ready(vdev);
	vtpm_set_ready(v, true);

	/* Runs TPM2_Startup/self test through us (TPM_OPS_AUTO_STARTUP). */
	err = tpm_chip_register(chip);
	if (err) {
		dev_err(dev, "TPM registration failed: %d\n", err);
		vtpm_set_ready(v, false);
		goto err_vq;
	}

	dev_info(dev,
		 "virtio TPM 2.0 (device id %u, %u-byte buffers) registered as %s\n",
		 vdev->id.device, size, dev_name(&chip->dev));
	return 0;

err_vq:
	virtio_reset_device(vdev);
	vtpm_release_vq(v);
err_req:
	vtpm_req_free(v->req);
err_priv:
	vdev->priv = NULL;
	return err;
}

static void vtpm_remove(struct virtio_device *vdev)
{
	struct vtpm *v = vdev->priv;

	/* Sends TPM2_Shutdown through us, then detaches our ops. */
	tpm_chip_unregister(v->chip);

	vtpm_set_ready(v, false);
	virtio_reset_device(vdev);
	vtpm_release_vq(v);

	vdev->priv = NULL;
	vtpm_req_free(v->req);
	/* The chip reference and @v are released by devres. */
}

#ifdef CONFIG_PM_SLEEP
/**
 * vtpm_startup_after_reset() - TPM2_Startup after a restore
 * @v: the device
 *
 * The device reset done on freeze does not power-cycle the TPM, but the
 * platform may have reset it while the guest slept.  Resume the state saved
 * by the TPM2_Shutdown(STATE) sent from freeze (TPM_RC_INITIALIZE says the
 * TPM kept running), or start clean when the TPM cannot resume it.
 */
static void vtpm_startup_after_reset(struct vtpm *v)
{
	static const u16 modes[] = { TPM2_SU_STATE, TPM2_SU_CLEAR };
	unsigned long timeout = vtpm_timeout(v->chip, TPM2_CC_STARTUP);
	struct {
		struct tpm_header hdr;
		__be16 mode;
	} __packed cmd;
	const struct tpm_header *rsp;
	u32 used, rc = 0;
	unsigned int i;
	int err;

	for (i = 0; i < ARRAY_SIZE(modes); i++) {
		cmd.hdr.tag = cpu_to_be16(TPM2_ST_NO_SESSIONS);
		cmd.hdr.length = cpu_to_be32(sizeof(cmd));
		cmd.hdr.ordinal = cpu_to_be32(TPM2_CC_STARTUP);
		cmd.mode = cpu_to_be16(modes[i]);

		mutex_lock(&v->xfer_lock);
		err = vtpm_xfer(v, (const u8 *)&cmd, sizeof(cmd), timeout,
				&used);
		if (!err && used >= TPM_HEADER_SIZE && used <= v->buf_size) {
			rsp = (const struct tpm_header *)v->req->rsp;
			rc = be32_to_cpu(rsp->return_code);
		} else if (!err) {
			err = -EIO;
		}
		mutex_unlock(&v->xfer_lock);

		if (err) {
			dev_err(&v->vdev->dev,
				"TPM2_Startup after resume failed: %d\n", err);
			return;
		}
		if (rc == TPM2_RC_SUCCESS || rc == TPM2_RC_INITIALIZE) {
			dev_info(&v->vdev->dev,
				 "resumed: TPM2_Startup(%s) returned 0x%x\n",
				 modes[i] == TPM2_SU_STATE ? "STATE" : "CLEAR",
				 rc);
			return;
		}
	}
	dev_err(&v->vdev->dev,
		"TPM2_Startup after resume returned TPM error 0x%x\n", rc);
}

static int vtpm_freeze(struct virtio_device *vdev)
{
	struct vtpm *v = vdev->priv;

	/* TPM2_Shutdown(STATE) and mark the chip suspended. */
	tpm_pm_suspend(&vdev->dev);

	/* Wait for a transfer in progress, then refuse new ones. */
	mutex_lock(&v->xfer_lock);
	vtpm_set_ready(v, false);
	v->rsp_pending = false;
	mutex_unlock(&v->xfer_lock);

	virtio_reset_device(vdev);
	vtpm_release_vq(v);
	return 0;
}

static int vtpm_restore(struct virtio_device *vdev)
{
	struct vtpm *v = vdev->priv;
	u32 size;
	int err;

	err = vtpm_read_buf_size(vdev, &size);
	if (err)
		return err;
	if (size != v->buf_size) {
		dev_err(&vdev->dev,
			"max_buffer_size changed across suspend (%u -> %u); refusing the device\n",
			v->buf_size, size);
		return -EINVAL;
	}

	err = vtpm_init_vq(v);
	if (err)
		return err;
	virtio_device_ready(vdev);
	vtpm_set_ready(v, true);

	vtpm_startup_after_reset(v);
	tpm_pm_resume(&vdev->dev);
	return 0;
}
#endif

static struct virtio_driver vtpm_driver = {
	.driver.name = KBUILD_MODNAME,
	.driver.owner = THIS_MODULE,
	/* Added after probe and removed before remove(): ->priv is valid. */
	.driver.dev_groups = vtpm_groups,
	.id_table = vtpm_id_table,
	.probe = vtpm_probe,
	.remove = vtpm_remove,
#ifdef CONFIG_PM_SLEEP
	.freeze = vtpm_freeze,
	.restore = vtpm_restore,
#endif
};

static int __init vtpm_module_init(void)
{
	if (device_id == 0 || device_id > 0xffff) {
		pr_err("device_id=%u is not a usable virtio device id (1..65535)\n",
		       device_id);
		return -EINVAL;
	}
	/* The alias table keeps the default; binding uses the parameter. */
	vtpm_id_table[0].device = device_id;
	return register_virtio_driver(&vtpm_driver);
}

static void __exit vtpm_module_exit(void)
{
	unregister_virtio_driver(&vtpm_driver);
}

module_init(vtpm_module_init);
module_exit(vtpm_module_exit);

MODULE_DESCRIPTION("TPM 2.0 over virtio");
MODULE_LICENSE("GPL");
