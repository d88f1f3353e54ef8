// A taken port is refused, never shared: --listen and --metrics_listen fail with "address in
// use" when another socket holds the port, even one that allows port sharing (SO_REUSEPORT,
// which gRPC sets by default).
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/listen_probe.h"
#include "server/rcknn_server.h"
#include "server/server_options.h"

namespace rcknn::server {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

// A TCP socket listening on 127.0.0.1 at a port the kernel picks, with SO_REUSEPORT set the way
// a default gRPC server sets it: a second socket with SO_REUSEPORT could share its port.
class SharingListener {
 public:
  SharingListener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    const int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = 0;
    if (::bind(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
        ::listen(fd_, 8) != 0) {
      ADD_FAILURE() << "cannot listen on 127.0.0.1:0";
      return;
    }
    socklen_t length = sizeof(address);
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&address), &length);
    port_ = ntohs(address.sin_port);
  }
  ~SharingListener() { Close(); }
  void Close() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  std::string address() const { return absl::StrCat("127.0.0.1:", port_); }

 private:
  int fd_ = -1;
  int port_ = 0;
};

ServerOptions Options() {
  ServerOptions options;
  options.listen_address = "127.0.0.1:0";
  options.metrics_listen_address.clear();
  options.threads = 1;
  return options;
}

TEST(ListenProbeTest, NamesATakenPort) {
  SharingListener holder;
  EXPECT_EQ(ProbeListenAddress(holder.address()), "address in use");
  const std::string address = holder.address();
  holder.Close();
  EXPECT_EQ(ProbeListenAddress(address), "");
  EXPECT_THAT(ProbeListenAddress("no-port"), HasSubstr("no port"));
}

TEST(ListenTest, TakenGrpcPortIsRefusedNotShared) {
  SharingListener holder;
  ServerOptions options = Options();
  options.listen_address = holder.address();
  absl::StatusOr<std::unique_ptr<RcknnServer>> server = RcknnServer::Start(options);
  ASSERT_FALSE(server.ok()) << "started on " << holder.address() << ", sharing its port";
  EXPECT_EQ(server.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(server.status().message(),
              AllOf(HasSubstr("address in use"), HasSubstr("--listen"),
                    HasSubstr(holder.address())));
  EXPECT_THAT(server.status().message(), ::testing::Not(HasSubstr("TLS")));
}

TEST(ListenTest, SecondServerOnTheSamePortIsRefused) {
  absl::StatusOr<std::unique_ptr<RcknnServer>> first = RcknnServer::Start(Options());
  ASSERT_TRUE(first.ok()) << first.status();
  ServerOptions options = Options();
  options.listen_address = (*first)->address();
  absl::StatusOr<std::unique_ptr<RcknnServer>> second = RcknnServer::Start(options);
  ASSERT_FALSE(second.ok());
  EXPECT_THAT(second.status().message(),
              AllOf(HasSubstr("address in use"), HasSubstr("--listen")));
}

TEST(ListenTest, TakenMetricsPortIsRefused) {
  SharingListener holder;
  ServerOptions options = Options();
  options.metrics_listen_address = holder.address();
  absl::StatusOr<std::unique_ptr<RcknnServer>> server = RcknnServer::Start(options);
  ASSERT_FALSE(server.ok()) << "serves metrics on " << holder.address() << ", sharing its port";
  EXPECT_EQ(server.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(server.status().message(),
              AllOf(HasSubstr("address in use"), HasSubstr("--metrics_listen"),
                    HasSubstr(holder.address())));
}

}  // namespace
}  // namespace rcknn::server
