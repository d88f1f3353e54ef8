#include "server/reflection_v1_service.h"

#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/descriptor.pb.h"

namespace rcknn::server {
namespace {

namespace v1 = ::grpc::reflection::v1;
using ::google::protobuf::DescriptorPool;
using ::google::protobuf::FileDescriptor;

// One stream: answers each request in order, with one write in flight.
class ReflectionReactor final
    : public grpc::ServerBidiReactor<v1::ServerReflectionRequest, v1::ServerReflectionResponse> {
 public:
  explicit ReflectionReactor(const std::vector<std::string>* services) : services_(services) {
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the client closed its side (or the call ended)
      Finish(grpc::Status::OK);
      return;
    }
    Answer();
    StartWrite(&response_);
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "the reflection stream was cut"));
      return;
    }
    StartRead(&request_);
  }

  void OnDone() override { delete this; }

 private:
  void Answer() {
    response_.Clear();
    response_.set_valid_host(request_.host());
    *response_.mutable_original_request() = request_;
    const DescriptorPool* pool = DescriptorPool::generated_pool();
    switch (request_.message_request_case()) {
      case v1::ServerReflectionRequest::kListServices:
        for (const std::string& name : *services_) {
          response_.mutable_list_services_response()->add_service()->set_name(name);
        }
        return;
      case v1::ServerReflectionRequest::kFileByFilename:
        AddFile(pool->FindFileByName(request_.file_by_filename()),
                absl::StrCat("file not found: ", request_.file_by_filename()));
        return;
      case v1::ServerReflectionRequest::kFileContainingSymbol:
        AddFile(pool->FindFileContainingSymbol(request_.file_containing_symbol()),
                absl::StrCat("symbol not found: ", request_.file_containing_symbol()));
        return;
      case v1::ServerReflectionRequest::kFileContainingExtension: {
        const v1::ExtensionRequest& extension = request_.file_containing_extension();
        const auto* type = pool->FindMessageTypeByName(extension.containing_type());
        const auto* field = type == nullptr ? nullptr
                                            : pool->FindExtensionByNumber(
                                                  type, extension.extension_number());
        AddFile(field == nullptr ? nullptr : field->file(),
                absl::StrCat("extension not found: ", extension.containing_type(), " ",
                             extension.extension_number()));
        return;
      }
      case v1::ServerReflectionRequest::kAllExtensionNumbersOfType: {
        const auto* type = pool->FindMessageTypeByName(request_.all_extension_numbers_of_type());
        if (type == nullptr) {
          Error(grpc::StatusCode::NOT_FOUND,
                absl::StrCat("type not found: ", request_.all_extension_numbers_of_type()));
          return;
        }
        std::vector<const google::protobuf::FieldDescriptor*> extensions;
        pool->FindAllExtensions(type, &extensions);
        v1::ExtensionNumberResponse* numbers = response_.mutable_all_extension_numbers_response();
        numbers->set_base_type_name(type->full_name());
        for (const auto* extension : extensions) numbers->add_extension_number(extension->number());
        return;
      }
      case v1::ServerReflectionRequest::MESSAGE_REQUEST_NOT_SET:
        break;
    }
    Error(grpc::StatusCode::INVALID_ARGUMENT, "no message_request set");
  }

  // `file` and, recursively, the files it imports, skipping those this stream has sent already;
  // a null `file` answers NOT_FOUND with `not_found`.
  void AddFile(const FileDescriptor* file, const std::string& not_found) {
    if (file == nullptr) {
      Error(grpc::StatusCode::NOT_FOUND, not_found);
      return;
    }
    v1::FileDescriptorResponse* files = response_.mutable_file_descriptor_response();
    std::vector<const FileDescriptor*> pending = {file};
    while (!pending.empty()) {
      const FileDescriptor* next = pending.back();
      pending.pop_back();
      if (!sent_.insert(next->name()).second) continue;
      google::protobuf::FileDescriptorProto proto;
      next->CopyTo(&proto);
      proto.SerializeToString(files->add_file_descriptor_proto());
      for (int i = 0; i < next->dependency_count(); ++i) pending.push_back(next->dependency(i));
    }
  }

  void Error(grpc::StatusCode code, const std::string& message) {
    v1::ErrorResponse* error = response_.mutable_error_response();
    error->set_error_code(static_cast<int>(code));
    error->set_error_message(message);
  }

  const std::vector<std::string>* const services_;
  v1::ServerReflectionRequest request_;
  v1::ServerReflectionResponse response_;
  absl::flat_hash_set<std::string> sent_;
};

}  // namespace

ReflectionV1Service::ReflectionV1Service(std::vector<std::string> services)
    : services_(std::move(services)) {}

grpc::ServerBidiReactor<v1::ServerReflectionRequest, v1::ServerReflectionResponse>*
ReflectionV1Service::ServerReflectionInfo(grpc::CallbackServerContext* /*context*/) {
  return new ReflectionReactor(&services_);
}

}  // namespace rcknn::server
