// Why an address cannot be listened on. gRPC's ServerBuilder and prometheus-cpp's Exposer report
// only that binding failed; this probe binds a plain TCP socket to the same address, the way
// they do (SO_REUSEADDR, no SO_REUSEPORT), and names the cause.
#ifndef RCKNN_SERVER_LISTEN_PROBE_H_
#define RCKNN_SERVER_LISTEN_PROBE_H_

#include <string>

namespace rcknn::server {

// For `address` ("host:port", "[v6-host]:port"; an empty host means every interface): "" if a TCP
// socket can be bound to every address the host resolves to right now (the socket is closed at
// once), "address in use" when one of them is taken (EADDRINUSE), else the resolver's or the
// system's error text. Never shares a port (no SO_REUSEPORT).
std::string ProbeListenAddress(const std::string& address);

}  // namespace rcknn::server

#endif  // RCKNN_SERVER_LISTEN_PROBE_H_
