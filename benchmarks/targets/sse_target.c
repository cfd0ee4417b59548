/* sse_target: a streaming OpenAI-compatible benchmark target at C speed, loopback only.
 *
 * POST .../chat/completions with "stream": true answers with a role chunk, N content
 * chunks and a usage chunk + "data: [DONE]", as chunked transfer encoding, each chunk in
 * its own write() with TCP_NODELAY, content chunk k due at arrival + ttft + k * gap (a fixed
 * schedule from the request's arrival, so lateness never accumulates). Without "stream":
 * true it answers one chat.completion JSON body. GET .../models lists one model.
 *
 * It measures itself: every content chunk's lateness (write returned minus its deadline)
 * goes into a 1 us histogram, served by GET /stats (POST /stats/reset clears it), so a
 * benchmark can tell whether the target, not the client, kept the gap. With --log PATH it
 * appends one line per request:
 *     request_id kernel_rx_ns accept_ns first_read_ns complete_ns
 * all on CLOCK_MONOTONIC (Python's time.perf_counter_ns clock on Linux); kernel_rx_ns is
 * the kernel's receive timestamp of the request's first bytes (SO_TIMESTAMPNS), 0 if none.
 *
 * Single-threaded epoll loop; timers in a min-heap, waited on with epoll_pwait2 (ns).
 *
 *   gcc -O2 -o sse_target sse_target.c
 *   ./sse_target --port 0 --chunks 16 --gap-ms 5 [--ttft-ms 0] [--close] [--log FILE]
 * prints "listening 127.0.0.1:PORT" on stdout once it accepts connections; SIGTERM or
 * SIGINT stop it (the log is flushed).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define IN_CAP 16384
#define HIST_US 1000000 /* 1 us buckets up to 1 s, then one overflow bucket */
#define MAX_EVENTS 1024
#define MAX_CHUNKS 4096

typedef struct conn {
    int fd;
    int streaming;   /* a stream is in progress: step is its next step */
    int step;        /* 0 = headers + role chunk, 1..N = content chunks */
    int keep_alive;
    int closing;     /* close once the output buffer drains */
    int heap_idx;    /* -1 when not scheduled */
    int64_t deadline;
    int64_t t_req;   /* request complete: the stream's schedule starts here */
    int64_t accept_ns, first_read_ns, kernel_rx_ns;
    size_t in_len;
    char *out;
    size_t out_len, out_off, out_cap;
    char in[IN_CAP];
} conn;

static int n_chunks = 16;
static int64_t gap_ns = 5000000, ttft_ns = 0;
static int force_close = 0;
static FILE *logf = NULL;
static int ep;
static volatile sig_atomic_t stop_flag = 0;

static uint32_t *hist;
static uint64_t hist_over, hist_count, writes_total, requests_total, streams_total,
    accepted_total, streams_done;
static int64_t hist_max, max_send_ns, max_iter_ns, max_wake_ns;
static int active_streams;

static char *role_frame, *tail_frame, *json_resp, *models_resp;
static size_t role_len, tail_len, json_len, models_len;
static char *content_frame[MAX_CHUNKS];
static size_t content_len[MAX_CHUNKS];

static conn **heap;
static int heap_n, heap_cap;

static int64_t mono_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t real_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

/* ---- min-heap of stream deadlines ---- */
static void heap_swap(int a, int b) {
    conn *t = heap[a];
    heap[a] = heap[b];
    heap[b] = t;
    heap[a]->heap_idx = a;
    heap[b]->heap_idx = b;
}
static void heap_up(int i) {
    while (i > 0) {
        int p = (i - 1) / 2;
        if (heap[p]->deadline <= heap[i]->deadline) break;
        heap_swap(p, i);
        i = p;
    }
}
static void heap_down(int i) {
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < heap_n && heap[l]->deadline < heap[m]->deadline) m = l;
        if (r < heap_n && heap[r]->deadline < heap[m]->deadline) m = r;
        if (m == i) return;
        heap_swap(i, m);
        i = m;
    }
}
static void heap_push(conn *c) {
    if (heap_n == heap_cap) {
        heap_cap = heap_cap ? heap_cap * 2 : 1024;
        heap = realloc(heap, sizeof(conn *) * heap_cap);
        if (!heap) die("realloc");
    }
    heap[heap_n] = c;
    c->heap_idx = heap_n++;
    heap_up(c->heap_idx);
}
static void heap_remove(conn *c) {
    int i = c->heap_idx;
    if (i < 0) return;
    heap_n--;
    if (i != heap_n) {
        heap[i] = heap[heap_n];
        heap[i]->heap_idx = i;
        heap_down(i);
        heap_up(i);
    }
    c->heap_idx = -1;
}

/* ---- connections ---- */
static void conn_close(conn *c) {
    heap_remove(c);
    if (c->streaming) active_streams--;
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c->out);
    free(c);
}

static void set_out_interest(conn *c, int want) {
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (want ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* One write per call; whatever the socket does not take waits for EPOLLOUT. Returns -1 if
 * the connection failed (and is closed). */
static int conn_send(conn *c, const char *buf, size_t len) {
    if (c->out_len == c->out_off) {
        int64_t t0 = mono_ns();
        ssize_t n = send(c->fd, buf, len, MSG_NOSIGNAL);
        int64_t dt = mono_ns() - t0;
        if (dt > max_send_ns) max_send_ns = dt;
        writes_total++;
        if (n < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK) {
                conn_close(c);
                return -1;
            }
            n = 0;
        }
        if ((size_t)n == len) return 0;
        buf += n;
        len -= (size_t)n;
        c->out_len = c->out_off = 0;
        set_out_interest(c, 1);
    }
    if (c->out_len + len > c->out_cap) {
        size_t cap = c->out_cap ? c->out_cap : 4096;
        while (cap < c->out_len + len) cap *= 2;
        c->out = realloc(c->out, cap);
        if (!c->out) die("realloc");
        c->out_cap = cap;
    }
    memcpy(c->out + c->out_len, buf, len);
    c->out_len += len;
    return 0;
}

static void record_lateness(int64_t late_ns) {
    int64_t us = late_ns / 1000;
    if (us < 0) us = 0;
    if (us < HIST_US) hist[us]++;
    else hist_over++;
    if (late_ns > hist_max) hist_max = late_ns;
    hist_count++;
}

static const char *const STATUS_HDR =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    "Transfer-Encoding: chunked\r\n";

static void finish_response(conn *c);

/* Send the stream's next step; returns -1 if the connection is gone. */
static int stream_step(conn *c, int64_t now) {
    if (c->step == 0) {
        char head[512];
        int n = snprintf(head, sizeof head, "%s%s\r\n", STATUS_HDR,
                         c->keep_alive ? "" : "Connection: close\r\n");
        /* headers and role chunk leave together: the client sees them as one arrival */
        char buf[1024];
        memcpy(buf, head, (size_t)n);
        memcpy(buf + n, role_frame, role_len);
        if (conn_send(c, buf, (size_t)n + role_len) < 0) return -1;
    } else {
        if (conn_send(c, content_frame[c->step - 1], content_len[c->step - 1]) < 0) return -1;
        record_lateness(mono_ns() - c->deadline);
        if (c->step == n_chunks) {
            if (conn_send(c, tail_frame, tail_len) < 0) return -1;
            c->streaming = 0;
            active_streams--;
            streams_done++;
            finish_response(c);
            return 0;
        }
    }
    (void)now;
    c->step++;
    c->deadline = c->t_req + ttft_ns + (int64_t)c->step * gap_ns;
    heap_push(c);
    return 0;
}

static void send_simple(conn *c, const char *status, const char *ctype, const char *body,
                        size_t body_len) {
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s\r\n", status,
                     ctype, body_len, c->keep_alive ? "" : "Connection: close\r\n");
    size_t total = (size_t)n + body_len;
    char *buf = malloc(total);
    if (!buf) die("malloc");
    memcpy(buf, head, (size_t)n);
    memcpy(buf + n, body, body_len);
    int rc = conn_send(c, buf, total);
    free(buf);
    if (rc == 0) finish_response(c);
}

static double hist_pct(double q) {
    if (!hist_count) return -1;
    uint64_t want = (uint64_t)(q / 100.0 * (double)(hist_count - 1)) + 1, seen = 0;
    for (int i = 0; i < HIST_US; i++) {
        seen += hist[i];
        if (seen >= want) return i / 1000.0;
    }
    return hist_max / 1e6;
}

static void stats_json(char *out, size_t cap) {
    snprintf(out, cap,
             "{\"accepted\":%llu,\"requests\":%llu,\"streams\":%llu,\"streams_done\":%llu,"
             "\"active_streams\":%d,\"writes\":%llu,\"chunks\":%llu,\"over_1s\":%llu,"
             "\"lateness_ms\":{\"p50\":%.3f,\"p90\":%.3f,\"p99\":%.3f,\"p999\":%.3f,"
             "\"max\":%.3f},\"max_send_ms\":%.3f,\"max_iteration_ms\":%.3f,"
             "\"max_wake_late_ms\":%.3f,\"gap_ms\":%.3f,\"chunks_per_stream\":%d}",
             (unsigned long long)accepted_total, (unsigned long long)requests_total,
             (unsigned long long)streams_total, (unsigned long long)streams_done, active_streams,
             (unsigned long long)writes_total, (unsigned long long)hist_count,
             (unsigned long long)hist_over, hist_pct(50), hist_pct(90), hist_pct(99),
             hist_pct(99.9), hist_max / 1e6, max_send_ns / 1e6, max_iter_ns / 1e6,
             max_wake_ns / 1e6, gap_ns / 1e6, n_chunks);
}

static int ends_with(const char *s, size_t n, const char *suffix) {
    size_t m = strlen(suffix);
    return n >= m && memcmp(s + n - m, suffix, m) == 0;
}

/* "stream" : true anywhere in the body (the benchmark's clients send flat JSON) */
static int body_wants_stream(const char *b, size_t n) {
    const char *key = "\"stream\"";
    for (const char *p = memmem(b, n, key, 8); p; p = memmem(p + 1, n - (size_t)(p + 1 - b), key, 8)) {
        const char *q = p + 8, *end = b + n;
        while (q < end && (*q == ' ' || *q == '\t')) q++;
        if (q >= end || *q != ':') continue;
        q++;
        while (q < end && (*q == ' ' || *q == '\t')) q++;
        return (size_t)(end - q) >= 4 && memcmp(q, "true", 4) == 0;
    }
    return 0;
}

static void try_parse(conn *c);

static void finish_response(conn *c) {
    if (!c->keep_alive) {
        if (c->out_len == c->out_off) {
            shutdown(c->fd, SHUT_WR);
            conn_close(c);
        } else {
            c->closing = 1;
        }
        return;
    }
    /* a pipelined request may already be buffered */
    if (c->in_len) try_parse(c);
}

/* Parse and answer one complete request if the buffer holds one. */
static void try_parse(conn *c) {
    if (c->streaming || c->closing) return;
    char *hdr_end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (!hdr_end) {
        if (c->in_len == IN_CAP) {
            c->keep_alive = 0;
            send_simple(c, "431 Request Header Fields Too Large", "text/plain", "", 0);
        }
        return;
    }
    size_t hdr_len = (size_t)(hdr_end - c->in) + 4;
    size_t content_length = 0;
    char rid[128] = "-";
    int keep_alive = !force_close;
    char *line = memchr(c->in, '\n', hdr_len);
    char *method = c->in, *sp1 = memchr(c->in, ' ', hdr_len);
    if (!line || !sp1) {
        c->keep_alive = 0;
        send_simple(c, "400 Bad Request", "text/plain", "", 0);
        return;
    }
    char *path = sp1 + 1, *sp2 = memchr(path, ' ', (size_t)(line - path));
    size_t path_len = sp2 ? (size_t)(sp2 - path) : 0;
    for (char *l = line + 1; l < hdr_end;) {
        char *eol = memchr(l, '\r', (size_t)(hdr_end + 2 - l));
        if (!eol) break;
        size_t ll = (size_t)(eol - l);
        if (ll > 15 && strncasecmp(l, "content-length:", 15) == 0) {
            content_length = strtoul(l + 15, NULL, 10);
        } else if (ll > 21 && strncasecmp(l, "x-loadkit-request-id:", 21) == 0) {
            char *v = l + 21;
            while (*v == ' ') v++;
            size_t vl = (size_t)(eol - v);
            if (vl >= sizeof rid) vl = sizeof rid - 1;
            memcpy(rid, v, vl);
            rid[vl] = 0;
            for (size_t i = 0; i < vl; i++)
                if (rid[i] == ' ') rid[i] = '_';
        } else if (ll > 11 && strncasecmp(l, "connection:", 11) == 0) {
            if (memmem(l + 11, ll - 11, "close", 5)) keep_alive = 0;
        }
        l = eol + 2;
    }
    if (hdr_len + content_length > IN_CAP) {
        c->keep_alive = 0;
        send_simple(c, "413 Payload Too Large", "text/plain", "", 0);
        return;
    }
    if (c->in_len < hdr_len + content_length) return;
    int64_t now = mono_ns();
    requests_total++;
    c->keep_alive = keep_alive;
    if (logf) {
        fprintf(logf, "%s %lld %lld %lld %lld\n", rid, (long long)c->kernel_rx_ns,
                (long long)c->accept_ns, (long long)c->first_read_ns, (long long)now);
    }
    char *body = c->in + hdr_len;
    size_t consumed = hdr_len + content_length;
    int is_post = (size_t)(sp1 - method) == 4 && memcmp(method, "POST", 4) == 0;
    int is_get = (size_t)(sp1 - method) == 3 && memcmp(method, "GET", 3) == 0;
    int want_stream = is_post && body_wants_stream(body, content_length);
    /* the request's bytes are consumed before answering, so a pipelined one stays intact */
    int chat = is_post && ends_with(path, path_len, "/chat/completions");
    int models = is_get && ends_with(path, path_len, "/models");
    int stats = is_get && path_len == 6 && memcmp(path, "/stats", 6) == 0;
    int reset = is_post && path_len == 12 && memcmp(path, "/stats/reset", 12) == 0;
    memmove(c->in, c->in + consumed, c->in_len - consumed);
    c->in_len -= consumed;
    c->first_read_ns = c->in_len ? now : 0;
    c->kernel_rx_ns = 0;
    if (chat && want_stream) {
        streams_total++;
        active_streams++;
        c->streaming = 1;
        c->step = 0;
        c->t_req = now;
        c->deadline = now + ttft_ns;
        if (ttft_ns == 0) stream_step(c, now);
        else heap_push(c);
    } else if (chat) {
        send_simple(c, "200 OK", "application/json", json_resp, json_len);
    } else if (models) {
        send_simple(c, "200 OK", "application/json", models_resp, models_len);
    } else if (stats) {
        char buf[1024];
        if (logf) fflush(logf);
        stats_json(buf, sizeof buf);
        send_simple(c, "200 OK", "application/json", buf, strlen(buf));
    } else if (reset) {
        memset(hist, 0, sizeof(uint32_t) * HIST_US);
        hist_over = hist_count = writes_total = requests_total = streams_total = 0;
        accepted_total = streams_done = 0;
        hist_max = max_send_ns = max_iter_ns = max_wake_ns = 0;
        send_simple(c, "200 OK", "application/json", "{}", 2);
    } else {
        const char *e = "{\"error\":{\"message\":\"not found\",\"type\":\"invalid_request_error\"}}";
        send_simple(c, "404 Not Found", "application/json", e, strlen(e));
    }
}

static void on_readable(conn *c) {
    for (;;) {
        if (c->in_len == IN_CAP) {
            try_parse(c);
            return;
        }
        char ctl[CMSG_SPACE(sizeof(struct timespec))];
        struct iovec iov = {.iov_base = c->in + c->in_len, .iov_len = IN_CAP - c->in_len};
        struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl,
                            .msg_controllen = sizeof ctl};
        ssize_t n = recvmsg(c->fd, &mh, 0);
        if (n > 0) {
            if (c->in_len == 0) {
                int64_t now = mono_ns();
                c->first_read_ns = now;
                c->kernel_rx_ns = 0;
                for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
                    if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
                        struct timespec ts;
                        memcpy(&ts, CMSG_DATA(cm), sizeof ts);
                        int64_t rx_real = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
                        c->kernel_rx_ns = rx_real - (real_ns() - mono_ns());
                    }
                }
            }
            c->in_len += (size_t)n;
            continue;
        }
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)) {
            conn_close(c);
            return;
        }
        if (errno == EINTR) continue;
        break;
    }
    try_parse(c);
}

static void on_writable(conn *c) {
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        writes_total++;
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return;
            conn_close(c);
            return;
        }
        c->out_off += (size_t)n;
    }
    c->out_len = c->out_off = 0;
    set_out_interest(c, 0);
    if (c->closing) {
        shutdown(c->fd, SHUT_WR);
        conn_close(c);
    }
}

static char *frame(const char *data, size_t *len) {
    /* one chunked-encoding frame holding one SSE event */
    size_t dl = strlen(data);
    char *f = malloc(dl + 32);
    if (!f) die("malloc");
    int n = sprintf(f, "%zx\r\n", dl);
    memcpy(f + n, data, dl);
    memcpy(f + n + dl, "\r\n", 2);
    *len = (size_t)n + dl + 2;
    return f;
}

static void build_bodies(void) {
    char buf[1024];
    role_frame = frame("data: {\"id\":\"n\",\"object\":\"chat.completion.chunk\",\"created\":0,"
                       "\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":"
                       "\"assistant\"},\"finish_reason\":null}]}\n\n",
                       &role_len);
    for (int i = 0; i < n_chunks; i++) {
        snprintf(buf, sizeof buf,
                 "data: {\"id\":\"n\",\"object\":\"chat.completion.chunk\",\"created\":0,"
                 "\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"tok%d \"},"
                 "\"finish_reason\":%s}]}\n\n",
                 i, i == n_chunks - 1 ? "\"length\"" : "null");
        content_frame[i] = frame(buf, &content_len[i]);
    }
    snprintf(buf, sizeof buf,
             "data: {\"id\":\"n\",\"object\":\"chat.completion.chunk\",\"created\":0,\"model\":"
             "\"m\",\"choices\":[],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":%d,"
             "\"total_tokens\":%d}}\n\ndata: [DONE]\n\n",
             n_chunks, n_chunks + 8);
    size_t ul;
    char *u = frame(buf, &ul);
    tail_frame = malloc(ul + 5);
    memcpy(tail_frame, u, ul);
    memcpy(tail_frame + ul, "0\r\n\r\n", 5);
    tail_len = ul + 5;
    free(u);
    char content[MAX_CHUNKS * 8 + 16];
    size_t cl = 0;
    for (int i = 0; i < n_chunks; i++) cl += (size_t)sprintf(content + cl, "tok%d ", i);
    if (cl) content[--cl] = 0;
    json_resp = malloc(cl + 512);
    json_len = (size_t)sprintf(
        json_resp,
        "{\"id\":\"n\",\"object\":\"chat.completion\",\"created\":0,\"model\":\"m\",\"choices\":"
        "[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"%s\"},\"finish_reason\":"
        "\"length\"}],\"usage\":{\"prompt_tokens\":8,\"completion_tokens\":%d,\"total_tokens\":"
        "%d}}",
        content, n_chunks, n_chunks + 8);
    models_resp = strdup("{\"object\":\"list\",\"data\":[{\"id\":\"m\",\"object\":\"model\","
                         "\"created\":0,\"owned_by\":\"x\"}]}");
    models_len = strlen(models_resp);
}

static void on_signal(int sig) {
    (void)sig;
    stop_flag = 1;
}

static void usage(void) {
    fprintf(stderr, "usage: sse_target [--port P] [--chunks N] [--gap-ms G] [--ttft-ms T] "
                    "[--close] [--log FILE] [--backlog B]\n");
    exit(2);
}

int main(int argc, char **argv) {
    int port = 0, backlog = 4096;
    const char *log_path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--close")) force_close = 1;
        else if (!v) usage();
        else if (!strcmp(a, "--port")) port = atoi(v), i++;
        else if (!strcmp(a, "--chunks")) n_chunks = atoi(v), i++;
        else if (!strcmp(a, "--gap-ms")) gap_ns = (int64_t)(atof(v) * 1e6), i++;
        else if (!strcmp(a, "--ttft-ms")) ttft_ns = (int64_t)(atof(v) * 1e6), i++;
        else if (!strcmp(a, "--log")) log_path = v, i++;
        else if (!strcmp(a, "--backlog")) backlog = atoi(v), i++;
        else usage();
    }
    if (n_chunks < 1 || n_chunks > MAX_CHUNKS || gap_ns < 0 || ttft_ns < 0) usage();
    hist = calloc(HIST_US, sizeof(uint32_t));
    if (!hist) die("calloc");
    build_bodies();
    if (log_path) {
        logf = fopen(log_path, "w");
        if (!logf) die("fopen log");
        setvbuf(logf, NULL, _IOFBF, 1 << 20);
    }
    signal(SIGPIPE, SIG_IGN);
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) die("socket");
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* inherited by accepted sockets: the kernel stamps each request's arrival */
    setsockopt(lfd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* loopback only, by design */
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind");
    if (listen(lfd, backlog) < 0) die("listen");
    socklen_t al = sizeof addr;
    getsockname(lfd, (struct sockaddr *)&addr, &al);
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
    printf("listening 127.0.0.1:%d\n", ntohs(addr.sin_port));
    fflush(stdout);

    struct epoll_event evs[MAX_EVENTS];
    while (!stop_flag) {
        struct timespec to, *top = NULL;
        if (heap_n) {
            int64_t wait = heap[0]->deadline - mono_ns();
            if (wait < 0) wait = 0;
            to.tv_sec = wait / 1000000000LL;
            to.tv_nsec = wait % 1000000000LL;
            top = &to;
        }
        int n = epoll_pwait2(ep, evs, MAX_EVENTS, top, NULL);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_pwait2");
        }
        int64_t woke = mono_ns();
        if (n == 0 && heap_n && woke - heap[0]->deadline > max_wake_ns)
            max_wake_ns = woke - heap[0]->deadline;
        for (int i = 0; i < n; i++) {
            conn *c = evs[i].data.ptr;
            if (!c) {
                for (;;) {
                    int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
                    if (fd < 0) break;
                    int64_t now = mono_ns();
                    accepted_total++;
                    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    conn *nc = calloc(1, sizeof(conn));
                    if (!nc) die("calloc");
                    nc->fd = fd;
                    nc->heap_idx = -1;
                    nc->accept_ns = now;
                    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.ptr = nc};
                    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
                    on_readable(nc); /* the request often came with the handshake */
                }
                continue;
            }
            /* each fd appears once per batch and only its own handler closes it */
            if (evs[i].events & EPOLLOUT) {
                on_writable(c);
                continue; /* reads are handled on the next wake */
            }
            if (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) on_readable(c);
        }
        int64_t now = mono_ns();
        while (heap_n && heap[0]->deadline <= now) {
            conn *c = heap[0];
            heap_remove(c);
            stream_step(c, now);
        }
        if (mono_ns() - woke > max_iter_ns) max_iter_ns = mono_ns() - woke;
    }
    if (logf) fclose(logf);
    return 0;
}
