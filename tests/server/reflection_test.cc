// grpc.reflection.v1 next to gRPC's v1alpha: a v1 client lists the services and gets the file
// descriptors, unknown names get NOT_FOUND answers, no call is counted UNIMPLEMENTED, and the v1
// messages are v1alpha's field for field (the wire format clients rely on).
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"
#include "grpc/reflection/v1/reflection.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/server/server_test_util.h"

namespace rcknn {
namespace {

namespace refl = ::grpc::reflection::v1;
using ::testing::Contains;
using ::testing::IsSupersetOf;

class ReflectionV1Test : public ::testing::Test {
 protected:
  void SetUp() override { test_ = testing::StartTestServer(); }

  // Sends `requests` on one ServerReflectionInfo stream and returns the answers; the stream must
  // end OK. A raw stub of the reflection service: the client library speaks rcknn.v1.Rcknn only,
  // and what is tested here is the reflection wire protocol itself.
  std::vector<refl::ServerReflectionResponse> Ask(
      const std::vector<refl::ServerReflectionRequest>& requests) {
    auto stub = refl::ServerReflection::NewStub(test_.channel);
    grpc::ClientContext context;
    testing::SetDeadline(context);
    auto stream = stub->ServerReflectionInfo(&context);
    std::vector<refl::ServerReflectionResponse> answers;
    for (const refl::ServerReflectionRequest& request : requests) {
      EXPECT_TRUE(stream->Write(request));
      refl::ServerReflectionResponse answer;
      EXPECT_TRUE(stream->Read(&answer));
      answers.push_back(answer);
    }
    stream->WritesDone();
    EXPECT_THAT(stream->Finish(), testing::StatusIs(grpc::StatusCode::OK));
    return answers;
  }

  // The value of the first exposition line starting with `series` (-1 if none).
  double SeriesValue(const std::string& series) const {
    for (absl::string_view line : absl::StrSplit(test_.server->metrics().TextExposition(), '\n')) {
      if (absl::StartsWith(line, series)) {
        return std::stod(std::string(line.substr(line.rfind(' ') + 1)));
      }
    }
    return -1;
  }

  testing::TestServer test_;
};

std::vector<std::string> FileNames(const refl::ServerReflectionResponse& answer) {
  std::vector<std::string> names;
  for (const std::string& bytes : answer.file_descriptor_response().file_descriptor_proto()) {
    google::protobuf::FileDescriptorProto file;
    EXPECT_TRUE(file.ParseFromString(bytes));
    names.push_back(file.name());
  }
  return names;
}

TEST_F(ReflectionV1Test, ListsServicesAndServesFileDescriptors) {
  refl::ServerReflectionRequest list;
  list.set_list_services("");
  refl::ServerReflectionRequest symbol;
  symbol.set_file_containing_symbol("rcknn.v1.Rcknn.Search");
  refl::ServerReflectionRequest again;
  again.set_file_by_filename("rcknn/v1/rcknn.proto");
  refl::ServerReflectionRequest health;
  health.set_file_containing_symbol("grpc.health.v1.Health");
  const auto answers = Ask({list, symbol, again, health});
  ASSERT_EQ(answers.size(), 4u);

  std::vector<std::string> services;
  for (const auto& service : answers[0].list_services_response().service()) {
    services.push_back(service.name());
  }
  EXPECT_THAT(services, IsSupersetOf({"rcknn.v1.Rcknn", "grpc.health.v1.Health",
                                      "grpc.reflection.v1.ServerReflection",
                                      "grpc.reflection.v1alpha.ServerReflection"}));
  EXPECT_EQ(answers[0].original_request().message_request_case(),
            refl::ServerReflectionRequest::kListServices);

  ASSERT_EQ(answers[1].message_response_case(),
            refl::ServerReflectionResponse::kFileDescriptorResponse);
  ASSERT_THAT(FileNames(answers[1]), Contains("rcknn/v1/rcknn.proto"));
  google::protobuf::FileDescriptorProto file;
  ASSERT_TRUE(file.ParseFromString(answers[1].file_descriptor_response().file_descriptor_proto(0)));
  EXPECT_EQ(file.package(), "rcknn.v1");
  ASSERT_EQ(file.service_size(), 1);
  EXPECT_EQ(file.service(0).name(), "Rcknn");
  // Sent once per stream, as gRPC's v1alpha does: the second request for the file gets none.
  EXPECT_EQ(answers[2].message_response_case(),
            refl::ServerReflectionResponse::kFileDescriptorResponse);
  EXPECT_THAT(FileNames(answers[2]), ::testing::IsEmpty());
  EXPECT_THAT(FileNames(answers[3]), Contains("grpc/health/v1/health.proto"));
}

TEST_F(ReflectionV1Test, UnknownNamesAnswerNotFound) {
  refl::ServerReflectionRequest symbol;
  symbol.set_file_containing_symbol("rcknn.v1.NoSuchThing");
  refl::ServerReflectionRequest file;
  file.set_file_by_filename("NoSuch.proto");
  refl::ServerReflectionRequest extensions;
  extensions.set_all_extension_numbers_of_type("rcknn.v1.NoSuchThing");
  for (const auto& answer : Ask({symbol, file, extensions})) {
    ASSERT_EQ(answer.message_response_case(), refl::ServerReflectionResponse::kErrorResponse);
    EXPECT_EQ(answer.error_response().error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_THAT(answer.error_response().error_message(), ::testing::HasSubstr("NoSuch"));
  }
  refl::ServerReflectionRequest numbers;
  numbers.set_all_extension_numbers_of_type("rcknn.v1.SearchRequest");
  const auto answers = Ask({numbers});
  EXPECT_EQ(answers[0].all_extension_numbers_response().base_type_name(), "rcknn.v1.SearchRequest");
}

TEST_F(ReflectionV1Test, CountedOkNeverUnimplemented) {
  refl::ServerReflectionRequest list;
  list.set_list_services("");
  Ask({list});
  const std::string ok =
      "grpc_server_handled_total{grpc_code=\"OK\",grpc_method=\"ServerReflectionInfo\","
      "grpc_service=\"grpc.reflection.v1.ServerReflection\"}";
  // The server records a call just after the client sees its end: wait for it (bounded).
  EXPECT_TRUE(testing::WaitFor([&] { return SeriesValue(ok) >= 1; }, absl::Seconds(5)));
  EXPECT_EQ(SeriesValue(ok), 1);
  const std::string text = test_.server->metrics().TextExposition();
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    if (absl::StrContains(line, "grpc_code=\"UNIMPLEMENTED\"")) {
      EXPECT_TRUE(absl::EndsWith(line, " 0")) << line;
    }
  }
}

// Every message of grpc.reflection.v1 has v1alpha's fields: same names, numbers, types, labels
// and oneofs (message types compared with the package renamed).
TEST(ReflectionV1ProtoTest, MessagesAreThoseOfV1alpha) {
  const google::protobuf::DescriptorPool* pool = google::protobuf::DescriptorPool::generated_pool();
  const google::protobuf::FileDescriptor* v1 =
      pool->FindFileContainingSymbol("grpc.reflection.v1.ServerReflection");
  ASSERT_NE(v1, nullptr);
  ASSERT_NE(pool->FindFileContainingSymbol("grpc.reflection.v1alpha.ServerReflection"), nullptr)
      << "gRPC's v1alpha reflection is not linked";
  ASSERT_GT(v1->message_type_count(), 0);
  for (int m = 0; m < v1->message_type_count(); ++m) {
    const google::protobuf::Descriptor* ours = v1->message_type(m);
    const google::protobuf::Descriptor* theirs =
        pool->FindMessageTypeByName(absl::StrCat("grpc.reflection.v1alpha.", ours->name()));
    ASSERT_NE(theirs, nullptr) << ours->name();
    ASSERT_EQ(ours->field_count(), theirs->field_count()) << ours->name();
    for (int f = 0; f < ours->field_count(); ++f) {
      const google::protobuf::FieldDescriptor* a = ours->field(f);
      const google::protobuf::FieldDescriptor* b = theirs->FindFieldByNumber(a->number());
      ASSERT_NE(b, nullptr) << a->full_name();
      EXPECT_EQ(a->name(), b->name());
      EXPECT_EQ(a->type(), b->type()) << a->full_name();
      EXPECT_EQ(a->label(), b->label()) << a->full_name();
      EXPECT_EQ(a->containing_oneof() == nullptr ? "" : a->containing_oneof()->name(),
                b->containing_oneof() == nullptr ? "" : b->containing_oneof()->name());
      if (a->message_type() != nullptr) {
        EXPECT_EQ(absl::StrReplaceAll(a->message_type()->full_name(), {{".v1.", ".v1alpha."}}),
                  b->message_type()->full_name());
      }
    }
  }
  const google::protobuf::ServiceDescriptor* service = v1->service(0);
  ASSERT_EQ(service->method_count(), 1);
  EXPECT_EQ(service->method(0)->name(), "ServerReflectionInfo");
  EXPECT_TRUE(service->method(0)->client_streaming());
  EXPECT_TRUE(service->method(0)->server_streaming());
}

}  // namespace
}  // namespace rcknn
