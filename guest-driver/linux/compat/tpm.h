/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Stand-in for drivers/char/tpm/tpm.h in the out-of-tree build of
 * tpm_virtio.
 *
 * tpm_virtio.c is written as an in-tree driver and includes the TPM core's
 * private header, "tpm.h".  Distribution kernel headers packages (Debian's
 * linux-headers-*) do not ship that header, so the out-of-tree Kbuild puts
 * this directory on the include path instead (ccflags-y -I).  It declares
 * only what the driver uses: exported GPL symbols of the TPM core, whose
 * prototypes are the same in every kernel the module supports (6.1 to 6.12
 * as built and tested), and a constant.  In a kernel tree the real tpm.h is
 * used and this file plays no part.
 *
 * It also gives feature macros for TPM core interfaces that changed after
 * 6.1, so that the driver tests one macro instead of kernel versions.  The
 * in-tree driver in the upstream patch is generated with these blocks
 * resolved for the target kernel (upstream/make-patch.sh).
 */
#ifndef TPM_VIRTIO_COMPAT_TPM_H
#define TPM_VIRTIO_COMPAT_TPM_H

#include <linux/device.h>
#include <linux/tpm.h>
#include <linux/types.h>
#include <linux/version.h>

/* Largest command and response the TPM core transmits. */
#define TPM_BUFSIZE		4096

struct tpm_chip *tpm_chip_alloc(struct device *pdev,
				const struct tpm_class_ops *ops);
struct tpm_chip *tpmm_chip_alloc(struct device *pdev,
				 const struct tpm_class_ops *ops);
int tpm_chip_register(struct tpm_chip *chip);
void tpm_chip_unregister(struct tpm_chip *chip);
unsigned long tpm_calc_ordinal_duration(struct tpm_chip *chip, u32 ordinal);
int tpm_pm_suspend(struct device *dev);
int tpm_pm_resume(struct device *dev);

/*
 * TPM_HAVE_CHIP_FLAG_SYNC: the TPM core knows TPM_CHIP_FLAG_SYNC (send()
 * returns the response in the command buffer, no recv()) and passes send()
 * the size of that buffer.  Both came with Linux 6.16 ("tpm: support devices
 * with synchronous send()", "tpm: add bufsiz parameter in the .send
 * callback").  TPM_CHIP_FLAG_SYNC is an enum constant, so it cannot be
 * tested with #ifdef itself.
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 16, 0)
#define TPM_HAVE_CHIP_FLAG_SYNC
#endif

#endif /* TPM_VIRTIO_COMPAT_TPM_H */
