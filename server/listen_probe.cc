#include "server/listen_probe.h"

#include <netdb.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace rcknn::server {

std::string ProbeListenAddress(const std::string& address) {
  std::string host;
  std::string port;
  if (!address.empty() && address.front() == '[') {
    const size_t close = address.find("]:");
    if (close == std::string::npos) return absl::StrCat("cannot parse ", address);
    host = address.substr(1, close - 1);
    port = address.substr(close + 2);
  } else {
    const size_t colon = address.rfind(':');
    if (colon == std::string::npos) return absl::StrCat("no port in ", address);
    host = address.substr(0, colon);
    port = address.substr(colon + 1);
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* found = nullptr;
  if (const int error = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(),
                                      &hints, &found);
      error != 0) {
    return absl::StrCat("cannot resolve ", address, ": ", ::gai_strerror(error));
  }
  std::string cause;
  for (const addrinfo* a = found; a != nullptr && cause.empty(); a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype, a->ai_protocol);
    if (fd < 0) continue;  // an address family this machine lacks (no IPv6, say)
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (::bind(fd, a->ai_addr, a->ai_addrlen) != 0) {
      cause = errno == EADDRINUSE ? "address in use" : std::strerror(errno);
    }
    ::close(fd);
  }
  ::freeaddrinfo(found);
  return cause;
}

}  // namespace rcknn::server
