// TLS, mutual TLS and bearer tokens, against a real in-process server with certificates made at
// test time by tests/server/make_test_certs.sh (Debian's openssl).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "client/rcknn_client.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "server/token_auth.h"
#include "tests/server/server_test_util.h"
#include "tests/testing/random_points.h"

namespace rcknn::testing {
namespace {

using ::testing::HasSubstr;
using testing::StatusIs;

std::string ReadFile(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  std::stringstream text;
  text << file.rdbuf();
  return text.str();
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
}

class SecurityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(absl::StrCat(::testing::TempDir(), "rcknn_security_test_", getpid()));
    const std::string command = absl::StrCat("/bin/sh '", RCKNN_MAKE_TEST_CERTS, "' '", *dir_, "'");
    ASSERT_EQ(std::system(command.c_str()), 0) << command;
    WriteFile(Path("tokens"), "# test tokens\n\nadmin-token\n  readonly reader-token  \n");
  }
  static void TearDownTestSuite() {
    std::system(absl::StrCat("rm -rf '", *dir_, "'").c_str());
    delete dir_;
  }
  static std::string Path(const std::string& name) { return absl::StrCat(*dir_, "/", name); }

  // TLS with the test CA's server certificate; `client_ca` requires client certificates.
  static server::ServerOptions TlsOptions(bool client_ca, bool tokens) {
    server::ServerOptions options;
    options.listen_address = "127.0.0.1:0";
    options.metrics_listen_address.clear();
    options.threads = 2;
    options.tls_cert_file = Path("server.pem");
    options.tls_key_file = Path("server.key");
    if (client_ca) options.tls_client_ca_file = Path("ca.pem");
    if (tokens) options.auth_token_file = Path("tokens");
    return options;
  }

  static std::unique_ptr<server::RcknnServer> Start(const server::ServerOptions& options) {
    auto started = server::RcknnServer::Start(options);
    EXPECT_TRUE(started.ok()) << started.status();
    return started.ok() ? *std::move(started) : nullptr;
  }

  // A client library instance trusting `ca` ("ca" or "other_ca"), presenting the client
  // certificate if asked, sending `token` if not empty; each call has a 10 s deadline.
  static std::unique_ptr<client::RcknnClient> Connect(const server::RcknnServer& server,
                                                      const std::string& ca, bool client_cert,
                                                      const std::string& token = "") {
    client::ClientOptions options;
    options.target = server.address();
    options.timeout = absl::Seconds(10);
    options.tls = true;
    options.tls_root_certs = ReadFile(Path(ca + ".pem"));
    if (client_cert) {
      options.tls_cert_chain = ReadFile(Path("client.pem"));
      options.tls_private_key = ReadFile(Path("client.key"));
    }
    options.token = token;
    return std::make_unique<client::RcknnClient>(options);
  }

  static absl::Status List(const server::RcknnServer& server, const std::string& ca,
                           bool client_cert, const std::string& token = "") {
    return Connect(server, ca, client_cert, token)->ListIndexes().status();
  }

  static std::string* dir_;
};

std::string* SecurityTest::dir_ = nullptr;

v1::IndexSpec SmallSpec() { return ResidualSpec(2, v1::KERNEL_RBF, 1.0, 1.0, 16); }

TEST_F(SecurityTest, TlsHandshakeAndSearch) {
  auto server = Start(TlsOptions(/*client_ca=*/false, /*tokens=*/false));
  ASSERT_NE(server, nullptr);
  const auto client = Connect(*server, "ca", /*client_cert=*/false);
  const absl::StatusOr<v1::IndexInfo> info =
      CreateReadyIndex(*client, "tls", SmallSpec(), NormalPoints(200, 2, 5));
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->state(), v1::INDEX_STATE_READY);
  const std::vector<int64_t> ids = {0, 1, 2};
  const absl::StatusOr<client::SearchResult> result = client->Search(IdQuery("tls", ids, 5));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->ids.size(), 15u);
}

TEST_F(SecurityTest, ClientTrustingAnotherCaIsRefused) {
  auto server = Start(TlsOptions(false, false));
  ASSERT_NE(server, nullptr);
  EXPECT_THAT(List(*server, "other_ca", false), StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(SecurityTest, PlaintextClientIsRefused) {
  auto server = Start(TlsOptions(false, false));
  ASSERT_NE(server, nullptr);
  client::ClientOptions options;
  options.target = server->address();
  options.timeout = absl::Seconds(10);
  EXPECT_THAT(client::RcknnClient(options).ListIndexes(), StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(SecurityTest, MutualTlsNeedsClientCertificate) {
  auto server = Start(TlsOptions(/*client_ca=*/true, false));
  ASSERT_NE(server, nullptr);
  EXPECT_THAT(List(*server, "ca", /*client_cert=*/false), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_TRUE(List(*server, "ca", /*client_cert=*/true).ok());
}

TEST_F(SecurityTest, MissingOrWrongTokenIsUnauthenticated) {
  auto server = Start(TlsOptions(false, /*tokens=*/true));
  ASSERT_NE(server, nullptr);
  EXPECT_THAT(List(*server, "ca", false), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(List(*server, "ca", false, "wrong-token"),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(List(*server, "ca", false, "admin-toke"),
              StatusIs(absl::StatusCode::kUnauthenticated));
  // Not the bearer scheme: the raw stub, since the client library always sends "Bearer <token>".
  const auto plain = Connect(*server, "ca", false);
  grpc::ClientContext context;
  testing::SetDeadline(context);
  context.AddMetadata("authorization", "admin-token");
  v1::ListIndexesResponse response;
  EXPECT_THAT(plain->stub().ListIndexes(&context, v1::ListIndexesRequest(), &response),
              StatusIs(grpc::StatusCode::UNAUTHENTICATED));
  EXPECT_TRUE(List(*server, "ca", false, "admin-token").ok());
  // Refused before any handler, yet counted: four refusals and one success.
  const std::string text = server->metrics().TextExposition();
  EXPECT_THAT(text, HasSubstr("grpc_server_handled_total{grpc_code=\"UNAUTHENTICATED\","
                              "grpc_method=\"ListIndexes\",grpc_service=\"rcknn.v1.Rcknn\"} 4"));
  EXPECT_THAT(text, HasSubstr("grpc_server_handled_total{grpc_code=\"OK\","
                              "grpc_method=\"ListIndexes\",grpc_service=\"rcknn.v1.Rcknn\"} 1"));
}

TEST_F(SecurityTest, ReadOnlyTokenSearchesButCannotWrite) {
  auto server = Start(TlsOptions(false, true));
  ASSERT_NE(server, nullptr);
  const auto admin = Connect(*server, "ca", false, "admin-token");
  const absl::StatusOr<v1::IndexInfo> ready =
      CreateReadyIndex(*admin, "ro", SmallSpec(), NormalPoints(200, 2, 6));
  ASSERT_TRUE(ready.ok()) << ready.status();
  ASSERT_EQ(ready->state(), v1::INDEX_STATE_READY);

  const auto reader = Connect(*server, "ca", false, "reader-token");
  const std::vector<int64_t> ids = {3};
  const absl::StatusOr<client::SearchResult> result = reader->Search(IdQuery("ro", ids, 5));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->ids.size(), 5u);
  EXPECT_TRUE(reader->GetIndex("ro").ok());
  EXPECT_TRUE(reader->ListIndexes().ok());

  EXPECT_THAT(reader->CreateIndex("new", SmallSpec()),
              StatusIs(absl::StatusCode::kPermissionDenied, "read-only"));
  const core::RowMatrix points = NormalPoints(10, 2, 7);
  EXPECT_THAT(reader->UploadPoints("ro", View(points)),
              StatusIs(absl::StatusCode::kPermissionDenied, "read-only"));
  EXPECT_THAT(reader->BuildIndex("ro"), StatusIs(absl::StatusCode::kPermissionDenied, "read-only"));
  EXPECT_THAT(reader->DeleteIndex("ro"),
              StatusIs(absl::StatusCode::kPermissionDenied, "read-only"));
  EXPECT_THAT(server->metrics().TextExposition(),
              HasSubstr("grpc_server_handled_total{grpc_code=\"PERMISSION_DENIED\","
                        "grpc_method=\"BuildIndex\",grpc_service=\"rcknn.v1.Rcknn\"} 1"));
  // The index is still there, and the admin token may delete it.
  EXPECT_TRUE(admin->DeleteIndex("ro").ok());
}

TEST_F(SecurityTest, ReloadedTokenFileReplacesTheTokens) {
  server::ServerOptions options = TlsOptions(false, true);
  options.auth_token_file = Path("tokens_reload");
  WriteFile(options.auth_token_file, "old-token\nreadonly old-reader\n");
  auto server = Start(options);
  ASSERT_NE(server, nullptr);
  EXPECT_TRUE(List(*server, "ca", false, "old-token").ok());
  EXPECT_THAT(List(*server, "ca", false, "new-token"),
              StatusIs(absl::StatusCode::kUnauthenticated));

  WriteFile(options.auth_token_file, "new-token\n");
  ASSERT_TRUE(server->ReloadAuthTokens().ok());
  EXPECT_TRUE(List(*server, "ca", false, "new-token").ok());
  EXPECT_THAT(List(*server, "ca", false, "old-token"),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(List(*server, "ca", false, "old-reader"),
              StatusIs(absl::StatusCode::kUnauthenticated));

  // A file that does not parse, or none at all, is refused and the tokens in force stay.
  WriteFile(options.auth_token_file, "# no token left\n");
  EXPECT_THAT(server->ReloadAuthTokens(), StatusIs(absl::StatusCode::kInvalidArgument));
  std::remove(options.auth_token_file.c_str());
  EXPECT_THAT(server->ReloadAuthTokens(), StatusIs(absl::StatusCode::kNotFound));
  EXPECT_TRUE(List(*server, "ca", false, "new-token").ok());

  // Without a token file there is nothing to reload.
  auto plain = Start(TlsOptions(false, false));
  ASSERT_NE(plain, nullptr);
  EXPECT_THAT(plain->ReloadAuthTokens(), StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST_F(SecurityTest, HealthStaysOpenWithoutToken) {
  auto server = Start(TlsOptions(false, true));
  ASSERT_NE(server, nullptr);
  // A raw stub of the health service, which the client library does not call.
  grpc::SslCredentialsOptions ssl;
  ssl.pem_root_certs = ReadFile(Path("ca.pem"));
  auto health = grpc::health::v1::Health::NewStub(
      grpc::CreateChannel(server->address(), grpc::SslCredentials(ssl)));
  grpc::ClientContext context;
  testing::SetDeadline(context);
  grpc::health::v1::HealthCheckResponse response;
  ASSERT_THAT(health->Check(&context, grpc::health::v1::HealthCheckRequest(), &response),
              StatusIs(grpc::StatusCode::OK));
  EXPECT_EQ(response.status(), grpc::health::v1::HealthCheckResponse::SERVING);
}

TEST_F(SecurityTest, ClientLibrarySendsTlsAndToken) {
  auto server = Start(TlsOptions(/*client_ca=*/true, /*tokens=*/true));
  ASSERT_NE(server, nullptr);
  client::ClientOptions options;
  options.timeout = testing::kCallTimeout;
  options.target = server->address();
  options.tls = true;
  options.tls_root_certs = ReadFile(Path("ca.pem"));
  options.tls_cert_chain = ReadFile(Path("client.pem"));
  options.tls_private_key = ReadFile(Path("client.key"));
  options.token = "reader-token";
  client::RcknnClient reader(options);
  EXPECT_TRUE(reader.ListIndexes().ok());
  EXPECT_THAT(reader.DeleteIndex("x"), StatusIs(absl::StatusCode::kPermissionDenied, "read-only"));
  options.token = "nope";
  EXPECT_THAT(client::RcknnClient(options).ListIndexes(),
              StatusIs(absl::StatusCode::kUnauthenticated));
}

TEST_F(SecurityTest, StartUpErrors) {
  server::ServerOptions options = TlsOptions(false, true);
  options.auth_token_file = Path("no-such-file");
  EXPECT_THAT(server::RcknnServer::Start(options),
              StatusIs(absl::StatusCode::kNotFound, "--auth_token_file"));

  WriteFile(Path("empty_tokens"), "# nothing\n\n");
  options.auth_token_file = Path("empty_tokens");
  EXPECT_THAT(server::RcknnServer::Start(options),
              StatusIs(absl::StatusCode::kInvalidArgument, "--auth_token_file"));

  options = TlsOptions(false, true);
  options.tls_cert_file.clear();
  options.tls_key_file.clear();
  EXPECT_THAT(server::RcknnServer::Start(options),
              StatusIs(absl::StatusCode::kInvalidArgument, "--auth_token_file needs --tls_cert"));

  options = TlsOptions(false, false);
  options.tls_key_file.clear();
  EXPECT_THAT(server::RcknnServer::Start(options),
              StatusIs(absl::StatusCode::kInvalidArgument, "--tls_cert and --tls_key go together"));
  options = TlsOptions(false, false);
  options.tls_cert_file = Path("no-such-cert.pem");
  EXPECT_THAT(server::RcknnServer::Start(options),
              StatusIs(absl::StatusCode::kNotFound, "no-such-cert.pem"));
}

TEST(TokenFileTest, Format) {
  auto tokens = server::ParseTokenFile("# c\n\n  a1 \nreadonly r1\n\treadonly\tr2\n");
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  ASSERT_EQ(tokens->size(), 3u);
  EXPECT_EQ((*tokens)[0].token, "a1");
  EXPECT_FALSE((*tokens)[0].read_only);
  EXPECT_EQ((*tokens)[1].token, "r1");
  EXPECT_TRUE((*tokens)[1].read_only);
  EXPECT_EQ((*tokens)[2].token, "r2");
  EXPECT_TRUE((*tokens)[2].read_only);
  EXPECT_FALSE(server::ParseTokenFile("").ok());
  EXPECT_FALSE(server::ParseTokenFile("# only\n").ok());
  EXPECT_THAT(std::string(server::ParseTokenFile("a\nwriter b\n").status().message()),
              HasSubstr("line 2"));
  EXPECT_FALSE(server::ParseTokenFile("readonly a b\n").ok());
}

TEST(TokenFileTest, MethodClasses) {
  for (const char* method : {"Search", "SearchStream", "GetIndex", "WatchIndex", "ListIndexes"}) {
    EXPECT_TRUE(server::IsReadOnlyMethod(absl::StrCat("/rcknn.v1.Rcknn/", method))) << method;
  }
  for (const char* method : {"CreateIndex", "UploadPoints", "BuildIndex", "DeleteIndex"}) {
    EXPECT_FALSE(server::IsReadOnlyMethod(absl::StrCat("/rcknn.v1.Rcknn/", method))) << method;
  }
  EXPECT_TRUE(server::IsOpenMethod("/grpc.health.v1.Health/Check"));
  EXPECT_TRUE(
      server::IsOpenMethod("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"));
  EXPECT_FALSE(server::IsOpenMethod("/rcknn.v1.Rcknn/Search"));
}

}  // namespace
}  // namespace rcknn::testing
