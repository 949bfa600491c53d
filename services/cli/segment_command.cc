#include "services/cli/segment_command.h"

#include <cstdio>
#include <filesystem>
#include <memory>
#include <optional>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "retina/v1/prediction_service.grpc.pb.h"
#include "services/rpc_util.h"

namespace retina::cli {
namespace {

struct SegmentFlags {
  std::string server, model, input, volume, region, out, mode, scaling, dataset;
  std::optional<double> overlap;
  std::optional<int64_t> context;
  std::vector<int64_t> chunks;
  double timeout_s = 600;
};

// "z0:z1,y0:y1,x0:x1" (a 2D region: "y0:y1,x0:x1" is planes 0:1).
absl::Status ParseRegion(const std::string& text, v1::Region* r) {
  std::vector<std::string> axes = absl::StrSplit(text, ',');
  if (axes.size() == 2) axes.insert(axes.begin(), "0:1");
  int64_t v[6];
  bool ok = axes.size() == 3;
  for (size_t a = 0; ok && a < 3; ++a) {
    std::vector<std::string> lohi = absl::StrSplit(axes[a], ':');
    ok = lohi.size() == 2 && absl::SimpleAtoi(lohi[0], &v[2 * a]) && absl::SimpleAtoi(lohi[1], &v[2 * a + 1]);
  }
  if (!ok) return absl::InvalidArgumentError("--region: '" + text + "' is not z0:z1,y0:y1,x0:x1");
  r->set_z0(v[0]);
  r->set_z1(v[1]);
  r->set_y0(v[2]);
  r->set_y1(v[3]);
  r->set_x0(v[4]);
  r->set_x1(v[5]);
  return absl::OkStatus();
}

absl::Status Segment(const ConnectFlags& connect, const SegmentFlags& f) {
  if (f.input.empty() == f.volume.empty()) {
    return absl::InvalidArgumentError("give -i FILE (sent to the server) or --volume PATH (a volume in the store)");
  }
  const bool zarr_out = absl::EndsWith(f.out, ".ome.zarr") || absl::EndsWith(f.out, ".ome.zarr/");
  if (zarr_out && f.volume.empty()) {
    return absl::InvalidArgumentError("-o " + f.out + ": an .ome.zarr output is written by the server, for --volume");
  }
  if (!zarr_out && !absl::EndsWith(f.out, ".tif") && !absl::EndsWith(f.out, ".tiff")) {
    return absl::InvalidArgumentError("-o " + f.out + ": write .tif/.tiff here, or NAME.ome.zarr on the server");
  }
  v1::PredictRequest req;
  req.set_model(f.model);
  req.set_mode(f.mode);
  req.set_scaling(f.scaling);
  if (f.overlap) req.set_overlap(*f.overlap);
  if (f.context) req.set_context(*f.context);
  if (!f.input.empty()) {
    ASSIGN_OR_RETURN(std::string bytes, ReadFile(f.input), "-i");
    req.mutable_file()->set_name(std::filesystem::path(f.input).filename().string());
    req.mutable_file()->set_dataset(f.dataset);
    req.mutable_file()->set_data(std::move(bytes));
  } else {
    req.mutable_region()->set_volume(f.volume);
    if (!f.region.empty()) RETURN_IF_ERROR(ParseRegion(f.region, req.mutable_region()));
  }
  if (zarr_out) {
    std::string name = f.out;
    while (absl::EndsWith(name, "/")) name.pop_back();
    req.set_output(name);
    for (int64_t c : f.chunks) req.add_output_chunks(c);
  } else {
    req.set_labels_tiff(true);
  }
  // The token as every command finds it; the channel to the model server.
  ASSIGN_OR_RETURN(Client c, Connect(connect));
  ASSIGN_OR_RETURN(auto channel, services::MakeChannel(f.server, connect.ca));
  auto stub = v1::PredictionService::NewStub(channel);
  auto ctx = services::NewCallContext(c.token, absl::Seconds(f.timeout_s));
  v1::PredictResponse resp;
  const grpc::Status s = stub->Predict(ctx.get(), req, &resp);
  if (!s.ok()) {
    for (const auto& [k, v] : ctx->GetServerTrailingMetadata()) {
      if (k == "retry-after-ms") {
        std::fprintf(stderr, "retina: the server is busy; retry in %s ms\n", std::string(v.data(), v.size()).c_str());
      }
    }
    return Call(s);
  }
  std::string where;
  if (zarr_out) {
    where = resp.output();
  } else {
    RETURN_IF_ERROR(WriteFileAtomic(f.out, resp.labels_file()), "-o");
    where = f.out;
  }
  std::printf("%s: model %s (%s), %lld windows, %.2f s on the server -> %s\n",
              f.input.empty() ? f.volume.c_str() : f.input.c_str(), resp.model().c_str(), resp.checkpoint().c_str(),
              static_cast<long long>(resp.windows()), resp.seconds(), where.c_str());
  return absl::OkStatus();
}

}  // namespace

void AddSegmentCommand(Cli& cli, const ConnectFlags* connect) {
  auto f = std::make_shared<SegmentFlags>();
  CLI::App* cmd = cli.Command("segment", "Segment an image, a file or a store region now, on a model server (retina-serve)",
                              [connect, f]() { return Segment(*connect, *f); });
  cmd->add_option("--server", f->server, "the model server, HOST:PORT (retina status of a serve job shows it)")
      ->required();
  cmd->add_option("--model", f->model, "a model it serves (retina-serve --model NAME=...)")->required();
  cmd->add_option("-i,--input", f->input, "a file sent to the server: .tif, .png, .h5 (with --dataset), .nii, .nrrd");
  cmd->add_option("--dataset", f->dataset, "-i of an HDF5 file: the dataset, e.g. /volumes/raw");
  cmd->add_option("--volume", f->volume, "a volume in the store (relative to it): OME-Zarr, TIFF, file.h5:/dataset");
  cmd->add_option("--region", f->region, "with --volume: z0:z1,y0:y1,x0:x1 (default: all of it)");
  cmd->add_option("-o,--out", f->out, "labels.tif here, or NAME.ome.zarr written by the server under served/<you>/")
      ->required();
  cmd->add_option("--mode", f->mode, "2d | stack | orthoplane (default stack)")
      ->check(CLI::IsMember({"2d", "stack", "orthoplane"}));
  cmd->add_option("--overlap", f->overlap, "sliding-window overlap (default 0.7 volumes, 0.5 images)")
      ->check(CLI::Range(0.0, 0.95));
  cmd->add_option("--context", f->context, "voxels read around a region (default half the window)")
      ->check(kNonNegativeInt);
  cmd->add_option("--scaling", f->scaling, "non-uint8 inputs: minmax")->check(CLI::IsMember({"minmax"}));
  cmd->add_option("--chunks", f->chunks, "an .ome.zarr output's chunks z,y,x when it is created")
      ->delimiter(',')
      ->expected(3);
  cmd->add_option("--timeout-s", f->timeout_s, "the call's deadline")->check(kPositiveNumber);
}

}  // namespace retina::cli
