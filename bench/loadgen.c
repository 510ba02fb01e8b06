/*
 * loadgen: the two load patterns wrk cannot make, for bench/run.sh.
 *
 *   loadgen rate   -p PORT [-h HOST] [-u PATH] -r RATE [-c CONNS] [-d SECS] [-w SECS] [-s]
 *       Open loop: HTTP/1.1 keep-alive at a fixed RATE (req/s in total) over at most
 *       CONNS connections, one request in flight per connection; -s: over TLS (-V sets the
 *       version), each connection's handshake done before the schedule starts.  Request k is
 *       *scheduled* for t0 + k/RATE whether or not a connection is free; its latency is
 *       measured from that scheduled time to the last byte of its response, so time spent
 *       waiting behind a slow server counts (no coordinated omission).  The first -w
 *       seconds are a warm-up and are not recorded.  Requests still unanswered when the
 *       drain time after the schedule runs out count as timeouts, with their latency so
 *       far included in the percentiles (a pessimistic, never an optimistic, figure).
 *
 *   loadgen tlsnew -p PORT [-h HOST] [-u PATH] [-c THREADS] [-d SECS] [-V 1.2|1.3] [-r RATE]
 *       Closed loop (or paced at RATE handshakes/s in total with -r: request k starts no
 *       earlier than t0 + k/RATE, so the proxy's CPU per handshake is measured at a load it
 *       can sustain, not only saturated): each of THREADS threads repeatedly opens a TCP connection, performs a
 *       *full* TLS handshake (a fresh SSL object, no session set, the client session cache
 *       off, no tickets asked for, so nothing can be resumed), sends one request with
 *       "Connection: close", reads the response and closes.  Resumed handshakes are
 *       counted (SSL_session_reused) and must be 0.
 *
 * Output: one JSON object on stdout; a human summary on stderr.  Every run is bounded:
 * the schedule ends after -w + -d seconds and the drain after at most -T more.
 *
 * Build: gcc -O2 -o loadgen loadgen.c -lssl -lcrypto -lpthread
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NS 1000000000LL

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * NS + ts.tv_nsec;
}

static void die(const char *msg) {
    fprintf(stderr, "loadgen: %s\n", msg);
    exit(2);
}

/* ---------- options ---------- */

static const char *opt_host = "127.0.0.1";
static int opt_port = 0;
static const char *opt_path = "/100";
static double opt_rate = 2000.0;
static int opt_conns = 32;
static double opt_duration = 10.0;
static double opt_warmup = 1.0;
static double opt_drain = 5.0;
static const char *opt_tls_version = "1.3";
static int opt_tls = 0;      /* rate: -s, keep-alive over TLS */
static int opt_rate_set = 0; /* tlsnew: -r given, pace the handshakes */

static struct sockaddr_in server_addr;
static char request[1024];
static size_t request_len;

/* ---------- latencies ---------- */

typedef struct {
    int64_t *v;
    size_t n, cap;
} lat_t;

static void lat_add(lat_t *l, int64_t x) {
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 65536;
        l->v = realloc(l->v, l->cap * sizeof *l->v);
        if (!l->v) die("out of memory");
    }
    l->v[l->n++] = x;
}

static int cmp64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* the q-quantile (nearest rank) in microseconds; -1 if empty */
static double pct_us(const lat_t *l, double q) {
    if (l->n == 0) return -1;
    size_t rank = (size_t)(q * (double)l->n + 0.999999);
    if (rank < 1) rank = 1;
    if (rank > l->n) rank = l->n;
    return (double)l->v[rank - 1] / 1000.0;
}

/* ---------- a minimal HTTP/1.1 response reader ---------- */

enum { R_HEAD, R_BODY_CL, R_CHUNK_SIZE, R_CHUNK_DATA, R_CHUNK_CRLF, R_TRAILER, R_TO_EOF, R_DONE };

typedef struct {
    int state;
    char head[16384];
    size_t hlen;
    long long remaining;
    int status;
    int close_after;
    char line[256];
    size_t llen;
} resp_t;

static void resp_reset(resp_t *r) {
    r->state = R_HEAD;
    r->hlen = 0;
    r->remaining = 0;
    r->status = 0;
    r->close_after = 0;
    r->llen = 0;
}

/* Parse the head in r->head[0..hlen) (ends with CRLFCRLF).  0 ok, -1 malformed. */
static int resp_parse_head(resp_t *r) {
    if (r->hlen < 12 || strncmp(r->head, "HTTP/1.", 7) != 0) return -1;
    r->status = atoi(r->head + 9);
    long long cl = -1;
    int chunked = 0;
    if (r->head[7] == '0') r->close_after = 1; /* HTTP/1.0 */
    char *p = strstr(r->head, "\r\n");
    while (p && p + 2 < r->head + r->hlen) {
        char *line = p + 2;
        char *eol = strstr(line, "\r\n");
        if (!eol || eol == line) break;
        char *colon = memchr(line, ':', (size_t)(eol - line));
        if (colon) {
            size_t nlen = (size_t)(colon - line);
            char *val = colon + 1;
            while (val < eol && (*val == ' ' || *val == '\t')) val++;
            size_t vlen = (size_t)(eol - val);
            if (nlen == 14 && strncasecmp(line, "content-length", 14) == 0) {
                cl = atoll(val);
            } else if (nlen == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
                if (memmem(val, vlen, "chunked", 7)) chunked = 1;
            } else if (nlen == 10 && strncasecmp(line, "connection", 10) == 0) {
                if (vlen >= 5 && strncasecmp(val, "close", 5) == 0) r->close_after = 1;
                if (vlen >= 10 && strncasecmp(val, "keep-alive", 10) == 0) r->close_after = 0;
            }
        }
        p = eol;
    }
    if (r->status == 204 || r->status == 304 || (r->status >= 100 && r->status < 200)) {
        r->state = R_DONE; /* no body (1xx is not expected here; treated as final) */
    } else if (chunked) {
        r->state = R_CHUNK_SIZE;
        r->llen = 0;
    } else if (cl >= 0) {
        r->remaining = cl;
        r->state = cl ? R_BODY_CL : R_DONE;
    } else {
        r->state = R_TO_EOF;
        r->close_after = 1;
    }
    return 0;
}

/* Feed bytes.  Returns 1 when the response is complete, 0 for more, -1 on error. */
static int resp_feed(resp_t *r, const char *buf, size_t n) {
    size_t i = 0;
    while (i < n) {
        switch (r->state) {
        case R_HEAD: {
            /* copy byte-wise until CRLFCRLF: heads are small */
            while (i < n) {
                if (r->hlen >= sizeof r->head - 1) return -1;
                r->head[r->hlen++] = buf[i++];
                if (r->hlen >= 4 && memcmp(r->head + r->hlen - 4, "\r\n\r\n", 4) == 0) {
                    r->head[r->hlen] = 0;
                    if (resp_parse_head(r) < 0) return -1;
                    break;
                }
            }
            break;
        }
        case R_BODY_CL:
        case R_CHUNK_DATA: {
            size_t take = n - i;
            if ((long long)take > r->remaining) take = (size_t)r->remaining;
            r->remaining -= (long long)take;
            i += take;
            if (r->remaining == 0) {
                if (r->state == R_BODY_CL) {
                    r->state = R_DONE;
                } else {
                    r->state = R_CHUNK_CRLF;
                    r->llen = 0;
                }
            }
            break;
        }
        case R_CHUNK_SIZE:
        case R_CHUNK_CRLF:
        case R_TRAILER: {
            char c = buf[i++];
            if (r->llen >= sizeof r->line - 1) return -1;
            r->line[r->llen++] = c;
            if (c != '\n') break;
            r->line[r->llen] = 0;
            if (r->state == R_CHUNK_CRLF) {
                if (r->llen > 2) return -1;
                r->state = R_CHUNK_SIZE;
            } else if (r->state == R_CHUNK_SIZE) {
                if (!isxdigit((unsigned char)r->line[0])) return -1;
                long long size = strtoll(r->line, NULL, 16);
                if (size == 0) {
                    r->state = R_TRAILER;
                } else {
                    r->remaining = size;
                    r->state = R_CHUNK_DATA;
                }
            } else { /* trailer lines until an empty one */
                if (r->llen <= 2) r->state = R_DONE;
            }
            r->llen = 0;
            break;
        }
        case R_TO_EOF:
            i = n;
            break;
        case R_DONE:
            return -1; /* bytes after the response: we never pipeline */
        }
        if (r->state == R_DONE && i == n) return 1;
    }
    return r->state == R_DONE ? 1 : 0;
}

/* ---------- open loop ---------- */

enum { C_CLOSED, C_CONNECTING, C_HANDSHAKE, C_IDLE, C_BUSY };

typedef struct {
    int fd;
    int state;
    int64_t sched;   /* scheduled send time of the request in flight */
    int measured;    /* that request is in the measurement window */
    size_t wpos;     /* bytes of the request written */
    int64_t retry_at;
    SSL *ssl;        /* -s: the connection's TLS state, NULL in plain HTTP */
    resp_t r;
} conn_t;

static SSL_CTX *ssl_ctx;
static SSL_CTX *client_ctx(void);

static conn_t *conns;
static int *idle_stack, idle_top;
static int epfd;

static struct {
    long long completed, non2xx, conn_errors, timeouts, sent, reconnects, late_sends;
    long long max_backlog;
} st;
static lat_t lats;
static lat_t lags; /* how late each measured request was sent: the generator's own delay */

static void ep_set(conn_t *c, uint32_t events) {
    struct epoll_event ev = {.events = events, .data.u32 = (uint32_t)(c - conns)};
    if (epoll_ctl(epfd, EPOLL_CTL_MOD, c->fd, &ev) < 0) die("epoll_ctl MOD");
}

static void conn_open(conn_t *c, int64_t now) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0) die("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    int rc = connect(c->fd, (struct sockaddr *)&server_addr, sizeof server_addr);
    if (rc < 0 && errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        c->state = C_CLOSED;
        c->retry_at = now + 10 * 1000000LL;
        st.conn_errors++;
        return;
    }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN, .data.u32 = (uint32_t)(c - conns)};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, c->fd, &ev) < 0) die("epoll_ctl ADD");
    c->state = C_CONNECTING;
}

static void conn_make_idle(conn_t *c) {
    c->state = C_IDLE;
    idle_stack[idle_top++] = (int)(c - conns);
}

/* Close; a request in flight is lost: counted as an error (not in the percentiles). */
static void conn_fail(conn_t *c, int64_t now, int count_error) {
    if (c->state == C_BUSY && count_error) st.conn_errors++;
    if (c->state == C_IDLE) { /* remove from the idle stack */
        for (int i = 0; i < idle_top; i++)
            if (idle_stack[i] == (int)(c - conns)) {
                idle_stack[i] = idle_stack[--idle_top];
                break;
            }
    }
    if (c->ssl) {
        SSL_free(c->ssl);
        c->ssl = NULL;
        ERR_clear_error();
    }
    if (c->fd >= 0) {
        epoll_ctl(epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = C_CLOSED;
    c->retry_at = now; /* reconnect at once; a failing connect() backs off 10 ms */
    st.reconnects++;
}

/* Bytes moved (> 0), 0 at EOF, IO_AGAIN_IN / IO_AGAIN_OUT when the socket must become
 * readable / writable first, IO_ERR on an error: the same for plain TCP and TLS. */
enum { IO_AGAIN_IN = -2, IO_AGAIN_OUT = -3, IO_ERR = -1 };

static ssize_t io_ssl_result(conn_t *c, int n) {
    if (n > 0) return n;
    switch (SSL_get_error(c->ssl, n)) {
    case SSL_ERROR_WANT_READ: return IO_AGAIN_IN;
    case SSL_ERROR_WANT_WRITE: return IO_AGAIN_OUT;
    case SSL_ERROR_ZERO_RETURN: return 0;
    default: ERR_clear_error(); return n == 0 ? 0 : IO_ERR;
    }
}

static ssize_t io_send(conn_t *c, const char *buf, size_t len) {
    if (c->ssl) return io_ssl_result(c, SSL_write(c->ssl, buf, (int)len));
    ssize_t w = send(c->fd, buf, len, MSG_NOSIGNAL);
    if (w < 0) return errno == EAGAIN ? IO_AGAIN_OUT : IO_ERR;
    return w;
}

static ssize_t io_recv(conn_t *c, char *buf, size_t len) {
    if (c->ssl) return io_ssl_result(c, SSL_read(c->ssl, buf, (int)len));
    ssize_t got = recv(c->fd, buf, len, 0);
    if (got < 0) return errno == EAGAIN ? IO_AGAIN_IN : IO_ERR;
    return got;
}

/* TCP is up: plain connections are ready, TLS ones start their handshake. */
static void conn_up(conn_t *c, int64_t now);

static void conn_handshake(conn_t *c, int64_t now) {
    ssize_t rc = io_ssl_result(c, SSL_do_handshake(c->ssl));
    if (rc > 0) {
        ep_set(c, EPOLLIN);
        conn_make_idle(c);
    } else if (rc == IO_AGAIN_IN) {
        ep_set(c, EPOLLIN);
    } else if (rc == IO_AGAIN_OUT) {
        ep_set(c, EPOLLIN | EPOLLOUT);
    } else {
        conn_fail(c, now, 0);
        st.conn_errors++;
        c->retry_at = now + 10 * 1000000LL;
    }
}

static void conn_up(conn_t *c, int64_t now) {
    if (!opt_tls) {
        ep_set(c, EPOLLIN);
        conn_make_idle(c);
        return;
    }
    c->ssl = SSL_new(client_ctx());
    if (!c->ssl) die("SSL_new");
    SSL_set_fd(c->ssl, c->fd);
    SSL_set_tlsext_host_name(c->ssl, "localhost");
    SSL_set_connect_state(c->ssl);
    c->state = C_HANDSHAKE;
    conn_handshake(c, now);
}

static void conn_write(conn_t *c, int64_t now) {
    while (c->wpos < request_len) {
        ssize_t w = io_send(c, request + c->wpos, request_len - c->wpos);
        if (w == IO_AGAIN_OUT || w == IO_AGAIN_IN) {
            ep_set(c, w == IO_AGAIN_OUT ? EPOLLIN | EPOLLOUT : EPOLLIN);
            return;
        }
        if (w <= 0) {
            conn_fail(c, now, 1);
            return;
        }
        c->wpos += (size_t)w;
    }
    ep_set(c, EPOLLIN);
}

static void send_request(conn_t *c, int64_t sched, int measured, int64_t now) {
    c->state = C_BUSY;
    c->sched = sched;
    c->measured = measured;
    c->wpos = 0;
    resp_reset(&c->r);
    st.sent++;
    if (now - sched > 1000000LL) st.late_sends++; /* sent >1 ms after its schedule */
    if (measured) lat_add(&lags, now - sched);
    conn_write(c, now);
}

static void response_done(conn_t *c, int64_t now) {
    if (c->measured) {
        if (c->r.status >= 200 && c->r.status < 300) {
            st.completed++;
            lat_add(&lats, now - c->sched);
        } else {
            st.non2xx++;
        }
    }
    if (c->r.close_after) {
        c->state = C_BUSY; /* nothing lost */
        conn_fail(c, now, 0);
    } else {
        conn_make_idle(c);
    }
}

static int epoll_wait_ns(struct epoll_event *evs, int max, int64_t timeout_ns) {
    static int no_pwait2 = 0;
    if (timeout_ns < 0) timeout_ns = 0;
    if (!no_pwait2) {
        struct timespec ts = {.tv_sec = timeout_ns / NS, .tv_nsec = timeout_ns % NS};
        int n = epoll_pwait2(epfd, evs, max, &ts, NULL);
        if (n >= 0 || errno != ENOSYS) return n;
        no_pwait2 = 1;
    }
    return epoll_wait(epfd, evs, max, (int)((timeout_ns + 999999) / 1000000));
}

static int run_rate(void) {
    signal(SIGPIPE, SIG_IGN);
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0); /* wake on schedule, not up to 50 us late */
    epfd = epoll_create1(EPOLL_CLOEXEC);
    conns = calloc((size_t)opt_conns, sizeof *conns);
    idle_stack = calloc((size_t)opt_conns, sizeof *idle_stack);
    if (!conns || !idle_stack) die("out of memory");
    int64_t start = now_ns();
    for (int i = 0; i < opt_conns; i++) {
        conns[i].fd = -1;
        conn_open(&conns[i], start);
    }
    /* let the connections come up (bounded: 5 s), then start the schedule */
    struct epoll_event evs[256];
    while (idle_top < opt_conns && now_ns() - start < 5 * NS) {
        int n = epoll_wait_ns(evs, 256, 100 * 1000000LL);
        for (int i = 0; i < n; i++) {
            conn_t *c = &conns[evs[i].data.u32];
            int err = 0;
            socklen_t len = sizeof err;
            if (c->state == C_HANDSHAKE) {
                conn_handshake(c, now_ns());
                continue;
            }
            if (c->state != C_CONNECTING) continue;
            getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
            if (err) {
                conn_fail(c, now_ns(), 0);
                c->retry_at = now_ns() + 10 * 1000000LL;
            } else {
                conn_up(c, now_ns());
            }
        }
        for (int i = 0; i < opt_conns; i++)
            if (conns[i].state == C_CLOSED && conns[i].retry_at <= now_ns()) conn_open(&conns[i], now_ns());
    }
    if (idle_top == 0) die("no connection could be made");

    const double interval = 1e9 / opt_rate;
    const long long warm = (long long)(opt_warmup * opt_rate);
    const long long total = warm + (long long)(opt_duration * opt_rate);
    const int64_t t0 = now_ns();
    const int64_t sched_end = t0 + (int64_t)((double)total * interval);
    const int64_t hard_end = sched_end + (int64_t)(opt_drain * 1e9);
    long long next = 0; /* the next request index to send */
    char buf[65536];

    for (;;) {
        int64_t now = now_ns();
        long long due = now < t0 ? 0 : (long long)((double)(now - t0) / interval) + 1;
        if (due > total) due = total;
        while (next < due && idle_top > 0) {
            conn_t *c = &conns[idle_stack[--idle_top]];
            send_request(c, t0 + (int64_t)((double)next * interval), next >= warm, now);
            next++;
        }
        if (due - next > st.max_backlog) st.max_backlog = due - next;
        int busy = 0;
        for (int i = 0; i < opt_conns; i++) {
            conn_t *c = &conns[i];
            if (c->state == C_BUSY || c->state == C_CONNECTING || c->state == C_HANDSHAKE) busy++;
            if (c->state == C_CLOSED && c->retry_at <= now) conn_open(c, now);
        }
        if (next >= total && busy == 0) break;
        if (now >= hard_end) break;

        int64_t wake = hard_end;
        if (next < total && next >= due) {
            int64_t t_next = t0 + (int64_t)((double)next * interval);
            if (t_next < wake) wake = t_next;
        }
        if (wake > now + 10 * 1000000LL) wake = now + 10 * 1000000LL; /* reconnect retries */
        int n = epoll_wait_ns(evs, 256, wake - now);
        if (n < 0 && errno != EINTR) die("epoll_wait");
        for (int i = 0; i < n; i++) {
            conn_t *c = &conns[evs[i].data.u32];
            now = now_ns();
            if (c->state == C_CONNECTING) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err) {
                    conn_fail(c, now, 0);
                    st.conn_errors++;
                    c->retry_at = now + 10 * 1000000LL;
                } else {
                    conn_up(c, now);
                }
                continue;
            }
            if (c->state == C_HANDSHAKE) {
                conn_handshake(c, now);
                continue;
            }
            if (c->state == C_BUSY && c->wpos < request_len) { /* TLS may want IN to write */
                conn_write(c, now);
                if (c->state != C_BUSY) continue;
            }
            if (!(evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))) continue;
            if (c->state == C_IDLE) {
                /* TLS: session tickets and other records with no data are fine; anything
                 * else is the server closing an idle connection or bytes never asked for */
                if (io_recv(c, buf, sizeof buf) != IO_AGAIN_IN) conn_fail(c, now, 0);
                continue;
            }
            if (c->state != C_BUSY) continue;
            for (;;) {
                ssize_t got = io_recv(c, buf, sizeof buf);
                if (got == IO_AGAIN_IN) break;
                if (got == IO_AGAIN_OUT) {
                    ep_set(c, EPOLLIN | EPOLLOUT);
                    break;
                }
                if (got <= 0) { /* EOF or error */
                    if (got == 0 && c->r.state == R_TO_EOF) {
                        c->r.state = R_DONE;
                        c->r.close_after = 1;
                        response_done(c, now_ns());
                    } else {
                        conn_fail(c, now, 1);
                    }
                    break;
                }
                int rc = resp_feed(&c->r, buf, (size_t)got);
                if (rc < 0) {
                    conn_fail(c, now, 1);
                    break;
                }
                if (rc == 1) {
                    response_done(c, now_ns());
                    break;
                }
            }
        }
    }

    /* what is left unanswered (in flight or never sent) is a timeout, latency so far */
    int64_t end = now_ns();
    for (int i = 0; i < opt_conns; i++) {
        conn_t *c = &conns[i];
        if (c->state == C_BUSY && c->measured) {
            st.timeouts++;
            lat_add(&lats, end - c->sched);
        }
        if (c->ssl) SSL_free(c->ssl);
        if (c->fd >= 0) close(c->fd);
    }
    for (long long k = next; k < total; k++) {
        if (k < warm) continue;
        st.timeouts++;
        lat_add(&lats, end - (t0 + (int64_t)((double)k * interval)));
    }
    qsort(lats.v, lats.n, sizeof *lats.v, cmp64);
    qsort(lags.v, lags.n, sizeof *lags.v, cmp64);
    double measured_s = opt_duration;
    printf("{\"mode\": \"rate\", \"tls\": %d, \"offered_rps\": %.1f, \"duration_s\": %.3f, \"connections\": %d, "
           "\"requests\": %lld, \"rps\": %.1f, \"non2xx\": %lld, \"errors\": %lld, \"timeouts\": %lld, "
           "\"late_sends\": %lld, \"max_backlog\": %lld, \"p50_us\": %.1f, \"p90_us\": %.1f, "
           "\"p99_us\": %.1f, \"p999_us\": %.1f, \"max_us\": %.1f, \"send_lag_p50_us\": %.1f, "
           "\"send_lag_p99_us\": %.1f}\n",
           opt_tls, opt_rate, measured_s, opt_conns, st.completed, (double)st.completed / measured_s, st.non2xx,
           st.conn_errors, st.timeouts, st.late_sends, st.max_backlog, pct_us(&lats, 0.50),
           pct_us(&lats, 0.90), pct_us(&lats, 0.99), pct_us(&lats, 0.999),
           lats.n ? (double)lats.v[lats.n - 1] / 1000.0 : -1.0, pct_us(&lags, 0.50),
           pct_us(&lags, 0.99));
    fprintf(stderr,
            "loadgen rate: offered %.0f req/s for %.1f s: %lld ok (%.1f req/s), %lld non-2xx, %lld errors, "
            "%lld timeouts, %lld sent >1 ms late, backlog max %lld; latency from schedule: p50 %.0f us, "
            "p99 %.0f us, p99.9 %.0f us (own send lag p99 %.0f us)\n",
            opt_rate, opt_duration, st.completed, (double)st.completed / measured_s, st.non2xx,
            st.conn_errors, st.timeouts, st.late_sends, st.max_backlog, pct_us(&lats, 0.50),
            pct_us(&lats, 0.99), pct_us(&lats, 0.999), pct_us(&lags, 0.99));
    return 0;
}

/* ---------- a full TLS handshake per request ---------- */

static int64_t tls_deadline;
static pthread_mutex_t tls_mu = PTHREAD_MUTEX_INITIALIZER;
static struct {
    long long completed, non2xx, errors, resumed;
    char protocol[32], cipher[64], group[32];
} ts;

static int tls_one(lat_t *mine, long long *non2xx, long long *resumed) {
    int64_t t_start = now_ns();
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr) < 0) {
        close(fd);
        return -1;
    }
    SSL *ssl = SSL_new(ssl_ctx); /* fresh: no session to resume */
    SSL_set_fd(ssl, fd);
    SSL_set_tlsext_host_name(ssl, "localhost");
    int ok = -1;
    if (SSL_connect(ssl) == 1) {
        if (SSL_session_reused(ssl)) (*resumed)++;
        if (ts.protocol[0] == 0) {
            pthread_mutex_lock(&tls_mu);
            snprintf(ts.protocol, sizeof ts.protocol, "%s", SSL_get_version(ssl));
            snprintf(ts.cipher, sizeof ts.cipher, "%s", SSL_get_cipher_name(ssl));
            int nid = SSL_get_negotiated_group(ssl);
            const char *g = nid ? OBJ_nid2sn(nid & ~0x01000000 /* TLSEXT_nid_unknown */) : "?";
            snprintf(ts.group, sizeof ts.group, "%s", g ? g : "?");
            pthread_mutex_unlock(&tls_mu);
        }
        if (SSL_write(ssl, request, (int)request_len) == (int)request_len) {
            resp_t *r = malloc(sizeof *r);
            resp_reset(r);
            char buf[16384];
            for (;;) {
                int got = SSL_read(ssl, buf, sizeof buf);
                if (got <= 0) {
                    if (r->state == R_TO_EOF) ok = 0;
                    break;
                }
                int rc = resp_feed(r, buf, (size_t)got);
                if (rc < 0) break;
                if (rc == 1) {
                    ok = 0;
                    break;
                }
            }
            if (ok == 0) {
                if (r->status >= 200 && r->status < 300)
                    lat_add(mine, now_ns() - t_start);
                else
                    (*non2xx)++;
            }
            free(r);
        }
        SSL_shutdown(ssl); /* send close_notify; do not wait for the peer's */
    }
    SSL_free(ssl);
    close(fd);
    return ok;
}

static int64_t tls_t0;
static long long tls_next; /* -r: the next handshake's index in the schedule */

/* -r: wait for this thread's next slot in the schedule; 0 when the schedule is over. */
static int tls_pace(void) {
    if (!opt_rate_set) return now_ns() < tls_deadline;
    pthread_mutex_lock(&tls_mu);
    long long k = tls_next++;
    pthread_mutex_unlock(&tls_mu);
    int64_t at = tls_t0 + (int64_t)((double)k * 1e9 / opt_rate);
    if (at >= tls_deadline) return 0;
    struct timespec ts_at = {.tv_sec = at / NS, .tv_nsec = at % NS};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts_at, NULL) == EINTR) {
    }
    return 1;
}

static void *tls_thread(void *arg) {
    (void)arg;
    lat_t mine = {0};
    long long errors = 0, non2xx = 0, resumed = 0;
    while (tls_pace()) {
        if (tls_one(&mine, &non2xx, &resumed) < 0) {
            errors++;
            ERR_clear_error();
            if (errors > 1000 && mine.n == 0) break; /* nothing works: stop early */
        }
    }
    pthread_mutex_lock(&tls_mu);
    for (size_t i = 0; i < mine.n; i++) lat_add(&lats, mine.v[i]);
    ts.completed += (long long)mine.n;
    ts.errors += errors;
    ts.non2xx += non2xx;
    ts.resumed += resumed;
    pthread_mutex_unlock(&tls_mu);
    free(mine.v);
    return NULL;
}

/* The client context: no verification (a self-signed bench certificate), no session cache
 * and no tickets, so nothing is ever resumed. */
static SSL_CTX *client_ctx(void) {
    if (ssl_ctx) return ssl_ctx;
    ssl_ctx = SSL_CTX_new(TLS_client_method());
    if (!ssl_ctx) die("SSL_CTX_new");
    SSL_CTX_set_verify(ssl_ctx, SSL_VERIFY_NONE, NULL);
    SSL_CTX_set_session_cache_mode(ssl_ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(ssl_ctx, SSL_OP_NO_TICKET);
    int v = strcmp(opt_tls_version, "1.2") == 0 ? TLS1_2_VERSION : TLS1_3_VERSION;
    SSL_CTX_set_min_proto_version(ssl_ctx, v);
    SSL_CTX_set_max_proto_version(ssl_ctx, v);
    return ssl_ctx;
}

static int run_tlsnew(void) {
    signal(SIGPIPE, SIG_IGN);
    client_ctx();
    if (opt_conns < 1) opt_conns = 1;
    pthread_t *th = calloc((size_t)opt_conns, sizeof *th);
    int64_t t0 = now_ns();
    tls_t0 = t0;
    tls_deadline = t0 + (int64_t)(opt_duration * 1e9);
    for (int i = 0; i < opt_conns; i++)
        if (pthread_create(&th[i], NULL, tls_thread, NULL) != 0) die("pthread_create");
    for (int i = 0; i < opt_conns; i++) pthread_join(th[i], NULL);
    double elapsed = (double)(now_ns() - t0) / 1e9;
    qsort(lats.v, lats.n, sizeof *lats.v, cmp64);
    printf("{\"mode\": \"tlsnew\", \"offered_rps\": %.1f, \"duration_s\": %.3f, \"connections\": %d, \"requests\": %lld, "
           "\"rps\": %.1f, \"non2xx\": %lld, \"errors\": %lld, \"resumed\": %lld, \"protocol\": \"%s\", "
           "\"cipher\": \"%s\", \"group\": \"%s\", \"p50_us\": %.1f, \"p90_us\": %.1f, "
           "\"p99_us\": %.1f, \"p999_us\": %.1f, \"max_us\": %.1f}\n",
           opt_rate_set ? opt_rate : 0.0, elapsed, opt_conns, ts.completed, (double)ts.completed / elapsed, ts.non2xx, ts.errors,
           ts.resumed, ts.protocol, ts.cipher, ts.group, pct_us(&lats, 0.50), pct_us(&lats, 0.90),
           pct_us(&lats, 0.99), pct_us(&lats, 0.999),
           lats.n ? (double)lats.v[lats.n - 1] / 1000.0 : -1.0);
    fprintf(stderr,
            "loadgen tlsnew: %lld requests in %.2f s (%.1f req/s), each a full %s handshake "
            "(%s, %s); %lld resumed, %lld non-2xx, %lld errors; p50 %.0f us, p99 %.0f us\n",
            ts.completed, elapsed, (double)ts.completed / elapsed, ts.protocol, ts.cipher, ts.group,
            ts.resumed, ts.non2xx, ts.errors, pct_us(&lats, 0.50), pct_us(&lats, 0.99));
    return 0;
}

/* ---------- main ---------- */

/* Whether this process runs in a network namespace other than its parent's (ip netns exec
 * setns()es and execs us; PID 1's namespace may not be readable in a container). */
static int in_own_netns(void) {
    char path[64];
    struct stat mine, parent;
    snprintf(path, sizeof path, "/proc/%d/ns/net", (int)getppid());
    if (stat("/proc/self/ns/net", &mine) != 0 || stat(path, &parent) != 0) return 0;
    return mine.st_ino != parent.st_ino || mine.st_dev != parent.st_dev;
}

static void usage(void) {
    fprintf(stderr,
            "usage: loadgen rate   -p PORT [-h HOST] [-u PATH] [-r RATE] [-c CONNS] [-d SECS] [-w SECS] [-T SECS] [-s] [-V 1.2|1.3]\n"
            "       loadgen tlsnew -p PORT [-h HOST] [-u PATH] [-c THREADS] [-d SECS] [-V 1.2|1.3] [-r RATE]\n");
    exit(2);
}

int main(int argc, char **argv) {
    if (argc < 2) usage();
    const char *mode = argv[1];
    int opt;
    optind = 2;
    while ((opt = getopt(argc, argv, "h:p:u:r:c:d:w:T:V:s")) != -1) {
        switch (opt) {
        case 'h': opt_host = optarg; break;
        case 'p': opt_port = atoi(optarg); break;
        case 'u': opt_path = optarg; break;
        case 'r': opt_rate = atof(optarg); opt_rate_set = 1; break;
        case 's': opt_tls = 1; break;
        case 'c': opt_conns = atoi(optarg); break;
        case 'd': opt_duration = atof(optarg); break;
        case 'w': opt_warmup = atof(optarg); break;
        case 'T': opt_drain = atof(optarg); break;
        case 'V': opt_tls_version = optarg; break;
        default: usage();
        }
    }
    if (opt_port <= 0 || opt_port > 65535 || opt_rate <= 0 || opt_conns < 1 || opt_duration <= 0 ||
        opt_duration > 3600 || opt_warmup < 0 || opt_drain < 0)
        usage();
    memset(&server_addr, 0, sizeof server_addr);
    server_addr.sin_family = AF_INET;
    server_addr.sin_port = htons((uint16_t)opt_port);
    if (inet_pton(AF_INET, opt_host, &server_addr.sin_addr) != 1) die("-h must be an IPv4 address");
    /* Loopback only, or the dlba-lab subnet 10.77.0.0/24 when run inside a network
     * namespace of its own (dlba-lab exec client): never the machine's real networks. */
    uint32_t host_ip = ntohl(server_addr.sin_addr.s_addr);
    if ((host_ip >> 24) != 127 && !((host_ip >> 8) == 0x0a4d00 && in_own_netns()))
        die("-h must be in 127.0.0.0/8 (or 10.77.0.0/24 inside a lab namespace)");
    int close_conn = strcmp(mode, "tlsnew") == 0;
    request_len = (size_t)snprintf(request, sizeof request,
                                   "GET %s HTTP/1.1\r\nHost: localhost\r\nUser-Agent: dlba-loadgen\r\n%s\r\n",
                                   opt_path, close_conn ? "Connection: close\r\n" : "");
    if (request_len >= sizeof request) die("path too long");
    if (strcmp(mode, "rate") == 0) return run_rate();
    if (strcmp(mode, "tlsnew") == 0) return run_tlsnew();
    usage();
    return 2;
}
