// HTTP/1.1 "hello" server on every shard: keep-alive, pipelining, requests
// without a body (GET/HEAD); anything else gets 400 and the connection
// closes.
//   http_server [--port P] [--shards N] [--host H]
#include <string>
#include <string_view>

#include "serve_main.hpp"

namespace {

constexpr std::string_view kHello =
    "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world!";
constexpr std::string_view kBad = "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
constexpr std::size_t kMaxHead = 16 * 1024;

bool has_token(std::string_view head, std::string_view name, std::string_view value) {
  // Case-insensitive search for "name: ...value" in the header block.
  auto lower = [](std::string_view s) {
    std::string out(s);
    for (char& ch : out) ch = static_cast<char>(ch >= 'A' && ch <= 'Z' ? ch + 32 : ch);
    return out;
  };
  std::string h = lower(head);
  std::size_t at = h.find("\r\n" + lower(name) + ":");
  if (at == std::string::npos) return false;
  std::size_t end = h.find("\r\n", at + 2);
  return h.substr(at, end - at).find(lower(value)) != std::string::npos;
}

// One request head: true when the connection stays open.
bool answer(shardloop::Connection& c, std::string_view head) {
  bool body = has_token(head, "content-length", "") && !has_token(head, "content-length", ": 0");
  if (head.substr(0, 4) != "GET " && head.substr(0, 5) != "HEAD ") body = true;
  if (body || has_token(head, "transfer-encoding", "")) {
    c.write(kBad);
    return false;
  }
  if (head.substr(0, 5) == "HEAD ")
    c.write(kHello.substr(0, kHello.size() - 13));
  else
    c.write(kHello);
  bool http10 = head.find("HTTP/1.0\r\n") != std::string_view::npos;
  return http10 ? has_token(head, "connection", "keep-alive") : !has_token(head, "connection", "close");
}

}  // namespace

int main(int argc, char** argv) {
  shardloop::TcpHandlers h;
  h.on_connection = [](shardloop::Connection& c) { c.user = new std::string(); };
  h.on_close = [](shardloop::Connection& c) { delete static_cast<std::string*>(c.user); };
  h.on_data = [](shardloop::Connection& c, const char* data, std::size_t len) {
    auto& buf = *static_cast<std::string*>(c.user);
    std::string_view in(data, len);
    if (!buf.empty()) {
      buf.append(data, len);
      in = buf;
    }
    std::size_t used = 0;
    for (;;) {
      std::size_t end = in.find("\r\n\r\n", used);
      if (end == std::string_view::npos) break;
      if (!answer(c, in.substr(used, end + 4 - used))) {
        c.shutdown();
        return;
      }
      used = end + 4;
    }
    std::string rest(in.substr(used));
    if (rest.size() > kMaxHead) {
      c.write(kBad);
      c.shutdown();
      return;
    }
    buf = std::move(rest);
  };
  return native_example::serve(argc, argv, h);
}
