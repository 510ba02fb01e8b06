/* A frame flood for bench/packetbench.py: sends the fixed-size frames of FILE (one after
 * the other, SIZE bytes each) on an AF_PACKET socket bound to IFACE, round robin, in
 * sendmmsg batches of 64, for SECONDS; prints the frames sent.  Not the bottleneck: one
 * syscall per 64 frames.
 *
 *   cc -O2 -o flood bench/flood.c && ./flood IFACE FILE SIZE SECONDS
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: flood IFACE FILE SIZE SECONDS\n");
        return 2;
    }
    size_t size = (size_t)atoi(argv[3]);
    double seconds = atof(argv[4]);
    FILE *f = fopen(argv[2], "rb");
    if (!f) { perror(argv[2]); return 1; }
    static char frames[1 << 20];
    size_t total = fread(frames, 1, sizeof frames, f);
    fclose(f);
    size_t n = total / size;
    if (n == 0) { fprintf(stderr, "no frames\n"); return 1; }

    int s = socket(AF_PACKET, SOCK_RAW, 0);
    if (s < 0) { perror("socket"); return 1; }
    struct sockaddr_ll sll = {0};
    sll.sll_family = AF_PACKET;
    sll.sll_ifindex = (int)if_nametoindex(argv[1]);
    sll.sll_protocol = 0;
    if (bind(s, (struct sockaddr *)&sll, sizeof sll) < 0) { perror("bind"); return 1; }
    int qdisc_bypass = 1;
    setsockopt(s, SOL_PACKET, PACKET_QDISC_BYPASS, &qdisc_bypass, sizeof qdisc_bypass);

    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    memset(msgs, 0, sizeof msgs);
    long long sent = 0;
    size_t next = 0;
    double end = now() + seconds;
    while (now() < end) {
        for (int i = 0; i < BATCH; i++) {
            iov[i].iov_base = frames + (next % n) * size;
            iov[i].iov_len = size;
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            next++;
        }
        int got = sendmmsg(s, msgs, BATCH, 0);
        if (got > 0) sent += got;
    }
    printf("%lld\n", sent);
    return 0;
}
