/* The baseline: a plain C echo server, one thread, level-triggered epoll,
 * non-blocking sockets, TCP_NODELAY, each read written straight back (the
 * rest buffered until writable). Prints "READY <port>".
 *   plain_epoll_echo [port] */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

struct conn {
  int fd;
  char* pending; /* bytes the kernel did not take yet */
  size_t len;
};

static char buf[256 * 1024];

static void drop(int ep, struct conn* c) {
  epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
  close(c->fd);
  free(c->pending);
  free(c);
}

/* 0: keep the connection, -1: close it. */
static int flush(int ep, struct conn* c) {
  while (c->len > 0) {
    ssize_t n = write(c->fd, c->pending, c->len);
    if (n < 0) {
      if (errno == EAGAIN) break;
      return -1;
    }
    memmove(c->pending, c->pending + n, c->len - (size_t)n);
    c->len -= (size_t)n;
  }
  struct epoll_event ev = {.events = EPOLLIN | (c->len ? EPOLLOUT : 0), .data.ptr = c};
  epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
  return 0;
}

static int on_readable(int ep, struct conn* c) {
  ssize_t n = read(c->fd, buf, sizeof buf);
  if (n == 0) return -1;
  if (n < 0) return errno == EAGAIN ? 0 : -1;
  size_t off = 0;
  if (c->len == 0) {
    ssize_t w = write(c->fd, buf, (size_t)n);
    if (w < 0 && errno != EAGAIN) return -1;
    off = w > 0 ? (size_t)w : 0;
    if (off == (size_t)n) return 0;
  }
  c->pending = realloc(c->pending, c->len + (size_t)n - off);
  memcpy(c->pending + c->len, buf + off, (size_t)n - off);
  c->len += (size_t)n - off;
  return flush(ep, c);
}

int main(int argc, char** argv) {
  int port = argc > 1 ? atoi(argv[1]) : 0;
  int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(lfd, (struct sockaddr*)&addr, sizeof addr) || listen(lfd, 1024)) {
    perror("bind/listen");
    return 1;
  }
  socklen_t alen = sizeof addr;
  getsockname(lfd, (struct sockaddr*)&addr, &alen);
  int ep = epoll_create1(EPOLL_CLOEXEC);
  struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
  epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev);
  printf("READY %d\n", ntohs(addr.sin_port));
  fflush(stdout);
  struct epoll_event events[256];
  for (;;) {
    int n = epoll_wait(ep, events, 256, -1);
    for (int i = 0; i < n; ++i) {
      struct conn* c = events[i].data.ptr;
      if (c == NULL) {
        int fd;
        while ((fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
          setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
          struct conn* nc = calloc(1, sizeof *nc);
          nc->fd = fd;
          struct epoll_event ev = {.events = EPOLLIN, .data.ptr = nc};
          epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
        }
        continue;
      }
      int rc = 0;
      if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) rc = on_readable(ep, c);
      if (rc == 0 && (events[i].events & EPOLLOUT)) rc = flush(ep, c);
      if (rc < 0) drop(ep, c);
    }
  }
}
