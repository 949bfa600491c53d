#include "services/cli/cli_client.h"

#include <cstdlib>
#include <filesystem>
#include <iostream>

#include <google/protobuf/util/json_util.h>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "services/rpc_util.h"
#include "yaml-cpp/yaml.h"

namespace retina::cli {
namespace v1 = retina::v1;

std::unique_ptr<grpc::ClientContext> Client::Context(absl::Duration t) const {
  return services::NewCallContext(token, t);
}

absl::Status PrintJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.always_print_primitive_fields = true;
  const auto status = google::protobuf::util::MessageToJsonString(m, &out, o);
  if (!status.ok()) return absl::InternalError(std::string("JSON conversion: ") + status.ToString());
  std::cout << out;
  if (out.empty() || out.back() != '\n') std::cout << "\n";
  return absl::OkStatus();
}

namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

}  // namespace

absl::StatusOr<Client> Connect(ConnectFlags f) {
  std::string token;
  if (f.address.empty()) f.address = Env("RETINA_ADDRESS");
  if (f.token_file.empty()) token = Env("RETINA_TOKEN");
  if (f.token_file.empty() && token.empty()) f.token_file = Env("RETINA_TOKEN_FILE");
  if (f.ca.empty()) f.ca = Env("RETINA_CA");
  std::string config = Env("RETINA_CONFIG");
  if (config.empty() && !Env("HOME").empty()) config = Env("HOME") + "/.config/retina/cli.yaml";
  if (std::filesystem::exists(config)) {
    try {
      YAML::Node c = YAML::LoadFile(config);
      if (f.address.empty() && c["address"]) f.address = c["address"].as<std::string>();
      if (f.token_file.empty() && token.empty() && c["token_file"]) f.token_file = c["token_file"].as<std::string>();
      if (f.ca.empty() && c["ca"]) f.ca = c["ca"].as<std::string>();
    } catch (const YAML::Exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(config, ": ", e.what()));
    }
  }
  if (f.address.empty()) f.address = "127.0.0.1:50051";
  if (!f.token_file.empty()) {
    ASSIGN_OR_RETURN(token, services::ReadTokenFile(f.token_file));
  }
  ASSIGN_OR_RETURN(auto channel, services::MakeChannel(f.address, f.ca));
  return Client{v1::JobService::NewStub(channel), token, v1::ModelService::NewStub(channel)};
}

absl::Status Call(const grpc::Status& s) { return services::FromGrpcStatus(s); }

std::function<absl::StatusOr<int>()> Connected(const ConnectFlags* flags, ClientAction action) {
  return [flags, action = std::move(action)]() -> absl::StatusOr<int> {
    ASSIGN_OR_RETURN(Client c, Connect(*flags));
    return action(c);
  };
}

}  // namespace retina::cli
