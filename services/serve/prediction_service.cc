#include "services/serve/prediction_service.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace retina::serve {
namespace {

template <class Builder>
auto& Build(Builder builder, const char* name, const char* help, prometheus::Registry& r) {
  return builder.Name(name).Help(help).Register(r);
}

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::CANCELLED: return "CANCELLED";
    case grpc::StatusCode::UNAVAILABLE: return "UNAVAILABLE";
    case grpc::StatusCode::FAILED_PRECONDITION: return "FAILED_PRECONDITION";
    default: return "OTHER";
  }
}

void SetArray(v1::Array* out, const std::string& dtype, const std::vector<int64_t>& shape, const void* data,
              size_t bytes) {
  out->set_dtype(dtype);
  for (int64_t s : shape) out->add_shape(s);
  out->set_data(data, bytes);
}

}  // namespace

ServeMetrics::ServeMetrics(const std::string& version) : registry_(std::make_shared<prometheus::Registry>()) {
  auto& r = *registry_;
  Build(prometheus::BuildGauge(), "retina_build_info", "Build of the running binary (value 1)", r)
      .Add({{"version", version}, {"component", "serve"}})
      .Set(1);
  latency_ = &Build(prometheus::BuildHistogram(), "retina_serve_request_seconds",
                    "Predict latency on the server (queueing included), by model and gRPC code", r);
  batch_ = &Build(prometheus::BuildHistogram(), "retina_serve_batch_windows",
                  "Windows per forward pass (dynamic batching), by model", r);
  windows_ = &Build(prometheus::BuildCounter(), "retina_serve_windows_total", "Model windows run, by model", r);
  requests_ = &Build(prometheus::BuildCounter(), "retina_serve_requests_total", "Predict calls, by model and gRPC code", r);
  dropped_ = &Build(prometheus::BuildCounter(), "retina_serve_dropped_windows_groups_total",
                    "Window groups never run: the queue was full, their deadline passed, or the request was cancelled", r);
  queue_ = &Build(prometheus::BuildGauge(), "retina_serve_queue_windows", "Windows waiting for a forward pass", r).Add({});
  busy_ = &Build(prometheus::BuildGauge(), "retina_serve_forward_running", "1 while a forward pass runs", r).Add({});
  models_ = &Build(prometheus::BuildGauge(), "retina_serve_models", "Models loaded", r).Add({});
  loads_ = &Build(prometheus::BuildCounter(), "retina_serve_model_loads_total",
                  "Model loads: each model's first, and every hot reload", r).Add({});
  refusals_ = &Build(prometheus::BuildCounter(), "retina_serve_model_reloads_refused_total",
                     "New checkpoints refused (failed their MANIFEST or did not load); the old version kept serving", r)
                   .Add({});
}

void ServeMetrics::Request(const std::string& model, const std::string& code, double seconds) {
  static const prometheus::Histogram::BucketBoundaries kBuckets{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                                                                1,     2.5,  5,     10,   30,  60};
  latency_->Add({{"model", model}, {"code", code}}, kBuckets).Observe(seconds);
  requests_->Add({{"model", model}, {"code", code}}).Increment();
}

void ServeMetrics::BatchRun(const std::string& model, int64_t windows, double) {
  static const prometheus::Histogram::BucketBoundaries kBuckets{1, 2, 4, 8, 16, 32, 64, 128};
  batch_->Add({{"model", model}}, kBuckets).Observe(static_cast<double>(windows));
  windows_->Add({{"model", model}}).Increment(static_cast<double>(windows));
}

void ServeMetrics::Dropped(const std::string& model, const char* why) {
  dropped_->Add({{"model", model}, {"why", why}}).Increment();
}

void ServeMetrics::Models(int64_t served, int64_t loads, int64_t refusals) {
  models_->Set(static_cast<double>(served));
  if (loads > loads_seen_) loads_->Increment(static_cast<double>(loads - loads_seen_));
  if (refusals > refusals_seen_) refusals_->Increment(static_cast<double>(refusals - refusals_seen_));
  loads_seen_ = std::max(loads_seen_, loads);
  refusals_seen_ = std::max(refusals_seen_, refusals);
}

PredictionServiceImpl::PredictionServiceImpl(trainer::serving::ServingCore* core, trainer::serving::ModelPool* models,
                                             const services::Authenticator* auth, ServeMetrics* metrics)
    : core_(core), models_(models), auth_(auth), metrics_(metrics) {}

grpc::Status PredictionServiceImpl::Predict(grpc::ServerContext* context, const v1::PredictRequest* request,
                                            v1::PredictResponse* response) {
  const auto t0 = std::chrono::steady_clock::now();
  const std::string model = request->model();
  auto finish = [&](const absl::Status& s) {
    const grpc::Status g = services::ToGrpcStatus(s);
    if (auto hint = s.GetPayload("retry-after-ms")) context->AddTrailingMetadata("retry-after-ms", std::string(*hint));
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    response->set_seconds(seconds);
    // Only served models label the series (an unknown name would make new ones).
    metrics_->Request(models_->Get(model).ok() ? model : "", CodeName(g.error_code()), seconds);
    return g;
  };
  absl::StatusOr<services::Caller> caller = auth_->Check(*context, services::Role::kClient);
  if (!caller.ok()) return finish(caller.status());
  if (!ready_.load()) return finish(absl::UnavailableError("models are loading; retry shortly"));

  trainer::serving::PredictQuery q;
  q.user = caller->user;
  q.admin = caller->admin;
  q.model = model;
  switch (request->input_case()) {
    case v1::PredictRequest::kArray: {
      const v1::Array& a = request->array();
      trainer::serving::ArrayInput in;
      in.dtype = a.dtype();
      in.shape.assign(a.shape().begin(), a.shape().end());
      in.spacing.assign(a.spacing().begin(), a.spacing().end());
      in.unit = a.unit();
      in.data = a.data();
      q.input = std::move(in);
      break;
    }
    case v1::PredictRequest::kFile:
      q.input = trainer::serving::FileInput{request->file().name(), request->file().dataset(), request->file().data()};
      break;
    case v1::PredictRequest::kRegion: {
      const v1::Region& r = request->region();
      q.input = trainer::serving::RegionInput{r.volume(), {r.z0(), r.z1(), r.y0(), r.y1(), r.x0(), r.x1()}};
      break;
    }
    default:
      return finish(absl::InvalidArgumentError("input: give an array, a file or a region"));
  }
  q.mode = request->mode();
  q.scaling = request->scaling();
  if (request->has_overlap()) q.overlap = request->overlap();
  if (request->has_context()) q.context = request->context();
  q.probabilities = request->probabilities();
  q.uncertainty = request->uncertainty();
  q.output = request->output();
  q.output_chunks.assign(request->output_chunks().begin(), request->output_chunks().end());
  q.labels_tiff = request->labels_tiff();
  q.deadline = absl::FromChrono(context->deadline());
  q.cancelled = [context] { return context->IsCancelled(); };
  absl::StatusOr<trainer::serving::PredictAnswer> a = core_->Predict(q);
  if (!a.ok()) return finish(a.status());
  response->set_model(a->model);
  response->set_checkpoint(a->checkpoint);
  response->set_windows(a->windows);
  response->set_output(a->output);
  if (!a->labels.empty()) {
    SetArray(response->mutable_labels(), "uint8", a->shape, a->labels.data(), a->labels.size());
    for (double s : a->spacing) response->mutable_labels()->add_spacing(s);
    response->mutable_labels()->set_unit(a->unit);
  }
  if (!a->probabilities.empty()) {
    SetArray(response->mutable_probabilities(), "float32", a->probabilities_shape, a->probabilities.data(),
             a->probabilities.size() * sizeof(float));
  }
  if (!a->uncertainty.empty()) {
    SetArray(response->mutable_uncertainty(), "float32", a->shape, a->uncertainty.data(),
             a->uncertainty.size() * sizeof(float));
  }
  if (!a->labels_tiff.empty()) response->set_labels_file(a->labels_tiff);
  return finish(absl::OkStatus());
}

grpc::Status PredictionServiceImpl::ListModels(grpc::ServerContext* context, const v1::ListModelsRequest*,
                                               v1::ListModelsResponse* response) {
  absl::StatusOr<services::Caller> caller = auth_->Check(*context, services::Role::kClient);
  if (!caller.ok()) return services::ToGrpcStatus(caller.status());
  for (const trainer::serving::ModelStatus& s : models_->List()) {
    if (!s.spec.owner.empty() && s.spec.owner != caller->user && !caller->admin) continue;  // not theirs to see
    v1::ModelInfo* m = response->add_models();
    m->set_name(s.spec.name);
    m->set_weights(s.spec.weights);
    m->set_checkpoint(s.checkpoint.string());
    m->set_owner(s.spec.owner);
    m->set_classes(s.classes);
    m->set_window(s.window);
    m->set_version(s.version);
    m->set_reloads_refused(s.refused);
    m->set_config(s.config);
  }
  return grpc::Status::OK;
}

}  // namespace retina::serve
