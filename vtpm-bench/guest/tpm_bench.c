/*
 * tpm_bench: raw TPM 2.0 command latency as a guest program sees it.
 *
 * Sends GetRandom(32), PCR_Read, PCR_Extend and ECDSA P-256 Sign to a TPM character device
 * (default /dev/tpmrm0) in a loop, one write() + one read() per command, and prints one line
 * per command:  BENCH <name> n=<n> p50_us=<p50> p99_us=<p99> ops_s=<ops/s> cpu_us_op=<cpu>
 * (cpu: this process's user + system time per command, the driver's polling included).
 *
 * Usage: tpm_bench [-d /dev/tpmrm0] [-n fast_iterations] [-s sign_iterations] [-o name]
 * (-o: only the command of that name; an unknown name runs none, for a baseline)
 * Built statically by guest-driver/image/build.sh and placed in the test guest.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

static uint8_t resp[4096];

static size_t put16(uint8_t *p, uint16_t v) { p[0] = v >> 8; p[1] = v; return 2; }
static size_t put32(uint8_t *p, uint32_t v) { p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v; return 4; }
static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] << 24 | p[1] << 16 | p[2] << 8 | p[3]; }

/* Header + handles; returns length so far. */
static size_t begin(uint8_t *b, uint16_t tag, uint32_t cc)
{
	size_t n = put16(b, tag);
	n += put32(b + n, 0);
	n += put32(b + n, cc);
	return n;
}

/* Empty-password authorization area. */
static size_t pw_auth(uint8_t *b)
{
	size_t n = put32(b, 9);
	n += put32(b + n, 0x40000009);
	n += put16(b + n, 0);
	b[n++] = 0;
	n += put16(b + n, 0);
	return n;
}

static size_t finish(uint8_t *b, size_t n) { put32(b + 2, (uint32_t)n); return n; }

static int fd;

static ssize_t transact(const uint8_t *cmd, size_t len)
{
	if (write(fd, cmd, len) != (ssize_t)len) {
		perror("write");
		exit(2);
	}
	ssize_t r = read(fd, resp, sizeof(resp));
	if (r < 10) {
		perror("read");
		exit(2);
	}
	return r;
}

static uint32_t rc_of(void) { return get32(resp + 6); }

/* Sends until the TPM stops answering TPM_RC_RETRY (a TSS does the same). */
static void must(const uint8_t *cmd, size_t len, const char *what)
{
	for (int i = 0; i < 10; i++) {
		transact(cmd, len);
		if (rc_of() == 0)
			return;
		if (rc_of() != 0x922)
			break;
	}
	fprintf(stderr, "%s failed: rc 0x%x\n", what, rc_of());
	exit(3);
}

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

/* CPU time (user + system) this process has used, in µs: the polling in send() is
 * system time; time asleep on the interrupt is not. */
static double cpu_us(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e6 + ru.ru_utime.tv_usec +
	       ru.ru_stime.tv_usec;
}

/* Only the operation named with -o (NULL: all). */
static const char *only;

static int selected(const char *name)
{
	return !only || !strcmp(only, name);
}

static void bench(const char *name, const uint8_t *cmd, size_t len, int n)
{
	if (!selected(name))
		return;
	double *lat = calloc(n, sizeof(double));
	for (int i = 0; i < 10; i++)
		transact(cmd, len);
	double cpu0 = cpu_us();
	double start = now_us();
	for (int i = 0; i < n; i++) {
		double t = now_us();
		transact(cmd, len);
		lat[i] = now_us() - t;
		if (rc_of() != 0) {
			fprintf(stderr, "%s: rc 0x%x\n", name, rc_of());
			exit(3);
		}
	}
	double total = now_us() - start;
	double cpu = cpu_us() - cpu0;
	qsort(lat, n, sizeof(double), cmp);
	printf("BENCH %s n=%d p50_us=%.1f p99_us=%.1f ops_s=%.0f cpu_us_op=%.1f\n", name, n,
	       lat[n / 2], lat[(int)(n * 0.99) < n ? (int)(n * 0.99) : n - 1], n / (total / 1e6),
	       cpu / n);
	fflush(stdout);
	free(lat);
}

int main(int argc, char **argv)
{
	const char *dev = "/dev/tpmrm0";
	int n = 500, ns = 100, opt;
	while ((opt = getopt(argc, argv, "d:n:s:o:")) != -1) {
		switch (opt) {
		case 'd': dev = optarg; break;
		case 'n': n = atoi(optarg); break;
		case 's': ns = atoi(optarg); break;
		case 'o': only = optarg; break;
		default:
			fprintf(stderr, "usage: %s [-d dev] [-n fast] [-s sign] [-o operation]\n",
				argv[0]);
			return 1;
		}
	}
	fd = open(dev, O_RDWR);
	if (fd < 0) {
		fprintf(stderr, "open %s: %s\n", dev, strerror(errno));
		return 1;
	}
	uint8_t c[512];
	size_t l;

	l = begin(c, 0x8001, 0x17B);
	l += put16(c + l, 32);
	l = finish(c, l);
	bench("GetRandom(32)", c, l, n);

	l = begin(c, 0x8001, 0x17E);
	l += put32(c + l, 1);
	l += put16(c + l, 0x000B);
	c[l++] = 3;
	c[l++] = 0; c[l++] = 0; c[l++] = 1; /* PCR 16 */
	l = finish(c, l);
	bench("PCR_Read", c, l, n);

	l = begin(c, 0x8002, 0x182);
	l += put32(c + l, 16);
	l += pw_auth(c + l);
	l += put32(c + l, 1);
	l += put16(c + l, 0x000B);
	memset(c + l, 0x5a, 32);
	l += 32;
	l = finish(c, l);
	bench("PCR_Extend", c, l, n);

	if (!selected("ECDSA_P256_Sign")) {
		close(fd);
		return 0;
	}
	/* CreatePrimary: ECC P-256 ECDSA/SHA-256 signing key in the owner hierarchy. */
	uint8_t pub[64];
	size_t pl = 0;
	pl += put16(pub + pl, 0x0023);
	pl += put16(pub + pl, 0x000B);
	pl += put32(pub + pl, 0x00040072);
	pl += put16(pub + pl, 0);
	pl += put16(pub + pl, 0x0010);
	pl += put16(pub + pl, 0x0018);
	pl += put16(pub + pl, 0x000B);
	pl += put16(pub + pl, 0x0003);
	pl += put16(pub + pl, 0x0010);
	pl += put16(pub + pl, 0);
	pl += put16(pub + pl, 0);
	l = begin(c, 0x8002, 0x131);
	l += put32(c + l, 0x40000001);
	l += pw_auth(c + l);
	l += put16(c + l, 4);
	l += put16(c + l, 0);
	l += put16(c + l, 0);
	l += put16(c + l, (uint16_t)pl);
	memcpy(c + l, pub, pl);
	l += pl;
	l += put16(c + l, 0);
	l += put32(c + l, 0);
	l = finish(c, l);
	must(c, l, "CreatePrimary");
	uint32_t key = get32(resp + 10);

	l = begin(c, 0x8002, 0x15D);
	l += put32(c + l, key);
	l += pw_auth(c + l);
	l += put16(c + l, 32);
	memset(c + l, 0x11, 32);
	l += 32;
	l += put16(c + l, 0x0018);
	l += put16(c + l, 0x000B);
	l += put16(c + l, 0x8024);
	l += put32(c + l, 0x40000007);
	l += put16(c + l, 0);
	l = finish(c, l);
	must(c, l, "Sign (self-test)");
	bench("ECDSA_P256_Sign", c, l, ns);

	close(fd);
	return 0;
}
