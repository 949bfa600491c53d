// The `retina` command's connection to the coordinator (cli_commands.h for
// where the address, token and CA come from) and what every command shares.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include <google/protobuf/message.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "retina/v1/job_service.grpc.pb.h"
#include "retina/v1/model_service.grpc.pb.h"

namespace retina::cli {

inline constexpr absl::Duration kTimeout = absl::Seconds(30);

struct Client {
  std::unique_ptr<retina::v1::JobService::Stub> stub;
  std::string token;
  std::unique_ptr<retina::v1::ModelService::Stub> models;  // the model registry, same channel
  std::unique_ptr<grpc::ClientContext> Context(absl::Duration t = kTimeout) const;
};

// Where to connect, from the flags; the environment and the config file fill
// what they leave empty (see cli_commands.h).
struct ConnectFlags {
  std::string address, token_file, ca;
};
absl::StatusOr<Client> Connect(ConnectFlags f);

// A command that runs with a client; Connected connects first (with the
// flags as they are when it runs).
using ClientAction = std::function<absl::StatusOr<int>(const Client&)>;
std::function<absl::StatusOr<int>()> Connected(const ConnectFlags* flags, ClientAction action);

// The message as JSON (protobuf's canonical mapping: lowerCamelCase fields,
// enums as names, int64 as strings), one document on stdout.
absl::Status PrintJson(const google::protobuf::Message& m);
absl::Status Call(const grpc::Status& s);  // gRPC's status as ours

}  // namespace retina::cli
