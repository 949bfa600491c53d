#include "common/study/study.h"

#include <algorithm>
#include <set>
#include <sstream>
#include <tuple>

#include <nlohmann/json.hpp>
#include <yaml-cpp/yaml.h>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/job_config.h"
#include "common/status_macros.h"

namespace retina {
namespace {

using nlohmann::json;

std::string Quoted(const std::string& s) { return json(s).dump(); }  // a JSON string is a YAML scalar

// A CSV field, quoted when it holds a comma, quote or newline (RFC 4180).
std::string CsvField(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::string StepList(const std::vector<int64_t>& v) { return "[" + absl::StrJoin(v, ", ") + "]"; }

}  // namespace

absl::StatusOr<StudyPlan> PlanStudy(const std::string& yaml_text, const std::string& source) {
  ASSIGN_OR_RETURN(JobConfig c, ParseJobConfig(yaml_text, source));
  if (c.kind != JobKind::kStudy) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": kind: ", JobKindName(c.kind), " is not a study"));
  }
  const StudyConfig& st = c.study;
  StudyPlan plan;
  plan.datasets = st.datasets.empty() ? std::vector<std::string>{""} : st.datasets;
  plan.loop = !st.strategies.empty();
  if (plan.loop) {
    const std::string init = st.inits.empty() ? c.finetune.init : st.inits[0];
    for (const std::string& s : st.strategies) plan.arms.push_back({init, s, s});
  }
  for (size_t i = 0; i < st.inits.size() && !plan.loop; ++i) {
    plan.arms.push_back({st.inits[i], st.init_names.empty() ? st.inits[i] : st.init_names[i]});
  }
  std::set<std::string> names;
  for (const StudyArm& a : plan.arms) {
    if (!names.insert(a.name).second) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": study.inits: '", a.name,
                                                     "' appears twice (give study.init_names to tell them apart)"));
    }
  }
  plan.seeds = WholeNumbers(st.seeds);
  for (int i = 0; i < st.seed_count; ++i) plan.seeds.push_back(c.seed + i);
  if (std::set<int64_t>(plan.seeds.begin(), plan.seeds.end()).size() != plan.seeds.size()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": study.seeds: a seed appears twice"));
  }
  plan.eval_at = WholeNumbers(st.eval_at);
  if (plan.loop) {
    for (int k = 0; k < c.loop.rounds; ++k) plan.eval_at.push_back(c.loop.initial_blocks + int64_t{k} * c.loop.blocks_per_round);
  } else if (plan.eval_at.back() > c.finetune.iters) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": study.eval_at: ", plan.eval_at.back(),
                                                   " is past finetune.iters (", c.finetune.iters, ")"));
  }
  if (std::set<std::string>(plan.datasets.begin(), plan.datasets.end()).size() != plan.datasets.size()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": study.datasets: a dataset appears twice"));
  }
  const int64_t cells = static_cast<int64_t>(plan.datasets.size()) * plan.arms.size() * plan.seeds.size();
  if (cells > kStudyMaxChildren) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": study: ", plan.datasets.size(), " dataset(s) x ",
                                                   plan.arms.size(), " init(s) x ", plan.seeds.size(), " seed(s) = ",
                                                   cells, " children; a study has at most ", kStudyMaxChildren,
                                                   " (split it)"));
  }
  for (const std::string& o : st.set) {
    const std::string key = o.substr(0, o.find('='));
    if (StudyGridKey(key, !st.datasets.empty())) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": study.set: '", o, "': ", key,
                                                     " is set by the study's grid for each child"));
    }
  }
  int index = 0;
  for (const std::string& d : plan.datasets) {
    for (size_t a = 0; a < plan.arms.size(); ++a) {
      for (int64_t seed : plan.seeds) plan.children.push_back({index++, d, static_cast<int>(a), seed});
    }
  }
  // Every child must be a valid fine-tune (the `set` overrides, the datasets).
  for (const StudyChild& child : plan.children) RETURN_IF_ERROR(StudyChildYaml(yaml_text, plan, child, source).status());
  return plan;
}

absl::StatusOr<std::string> StudyChildYaml(const std::string& yaml_text, const StudyPlan& plan,
                                           const StudyChild& child, const std::string& source) {
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": ", e.what()));
  }
  ASSIGN_OR_RETURN(JobConfig study, ParseJobConfig(yaml_text, source));
  root.remove("study");
  YAML::Emitter out;
  out << root;
  const StudyArm& arm = plan.arms.at(child.arm);
  std::vector<std::string> overrides = {"kind=finetune", absl::StrCat("seed=", child.seed),
                                        "finetune.init=" + Quoted(arm.init),
                                        "finetune.eval_at=" + StepList(plan.eval_at)};
  if (plan.loop) {
    overrides = {"kind=loop", absl::StrCat("seed=", child.seed), "finetune.init=" + Quoted(arm.init),
                 "loop.strategy=" + Quoted(arm.strategy)};
  } else {
    root.remove("loop");
  }
  if (!child.dataset.empty()) {
    overrides.push_back("data.dataset=" + Quoted(child.dataset));
    overrides.push_back("data.test_dataset=" + Quoted(child.dataset + "-test"));
  }
  overrides.insert(overrides.end(), study.study.set.begin(), study.study.set.end());
  const std::string what = absl::StrCat(source, ": study child ", child.index, " (init ", arm.name, ", seed ", child.seed,
                                        child.dataset.empty() ? "" : ", dataset " + child.dataset, ")");
  ASSIGN_OR_RETURN(std::string yaml, ApplyConfigOverrides(std::string(out.c_str()) + "\n", overrides), what);
  RETURN_IF_ERROR(ParseJobConfig(yaml, what).status());
  return absl::StrCat("# ", what, "\n", yaml);
}

bool StudyMetricLowerIsBetter(const std::string& metric) { return metric == "mfd"; }

bool StudyGridKey(const std::string& key, bool datasets_axis) {
  if (key == "kind" || key == "seed" || key == "finetune" || key == "finetune.init" || key == "finetune.eval_at" ||
      key == "study" || key.rfind("study.", 0) == 0 || key == "loop.strategy") {
    return true;
  }
  return datasets_axis && (key == "data" || key == "data.dataset" || key == "data.test_dataset");
}

bool StudyStateEnded(const std::string& s) { return s == "SUCCEEDED" || s == "FAILED" || s == "CANCELLED"; }

namespace {

std::optional<double> ClassMetric(const ClassScore& c, const std::string& metric) {
  if (metric == "iou") return c.iou;
  if (metric == "f1") return c.f1;
  if (metric == "precision") return c.precision;
  if (metric == "recall") return c.recall;
  if (metric == "mfd") return c.mfd;
  return std::nullopt;
}

// A child's score of `metric` per class key at one eval: each class's mean
// over the test items, and "mean" over the classes (absent values skipped).
std::map<std::string, double> ChildScores(const EvalReport& report, const std::string& metric) {
  std::map<int, std::vector<double>> by_class;
  for (const EvalItem& item : report.items) {
    for (const ClassScore& c : item.classes) {
      if (std::optional<double> v = ClassMetric(c, metric)) by_class[c.cls].push_back(*v);
    }
  }
  std::map<std::string, double> out;
  double sum = 0;
  int n = 0;
  for (const auto& [cls, values] : by_class) {
    if (values.empty()) continue;
    const double m = Summarise(values).mean;
    out[std::to_string(cls)] = m;
    sum += m;
    ++n;
  }
  if (n > 0) out["mean"] = sum / n;
  return out;
}

}  // namespace

StudyReport AggregateStudy(const std::string& study_id, const StudyPlan& plan,
                           const std::vector<StudyChildResult>& results) {
  StudyReport r;
  r.study = study_id;
  r.datasets = plan.datasets;
  r.arms = plan.arms;
  r.seeds = plan.seeds;
  r.eval_at = plan.eval_at;
  if (plan.loop) r.axis = "blocks labelled";
  r.children_total = static_cast<int>(plan.children.size());
  std::map<int, const StudyChildResult*> by_index;
  for (const StudyChildResult& c : results) by_index[c.child.index] = &c;
  std::set<std::string> class_keys;
  for (const StudyChild& child : plan.children) {
    StudyChildStatus s;
    s.index = child.index;
    s.dataset = child.dataset;
    s.arm = child.arm;
    s.seed = child.seed;
    auto it = by_index.find(child.index);
    if (it != by_index.end()) {
      s.job_id = it->second->job_id;
      s.state = it->second->state;
      s.message = it->second->message;
      for (const auto& [step, report] : it->second->evals) s.steps.push_back(step);
    }
    if (s.state.empty()) s.state = "NOT_CREATED";
    r.children_ended += StudyStateEnded(s.state);
    r.children_succeeded += s.state == "SUCCEEDED";
    r.children.push_back(std::move(s));
  }
  r.complete = r.children_ended == r.children_total;
  std::map<std::tuple<std::string, int, int64_t>, const StudyChildStatus*> by_cell;
  for (const StudyChildStatus& c : r.children) by_cell[std::make_tuple(c.dataset, c.arm, c.seed)] = &c;

  for (const std::string& d : plan.datasets) {
    for (size_t a = 0; a < plan.arms.size(); ++a) {
      for (int64_t step : plan.eval_at) {
        StudyCell cell;
        cell.dataset = d;
        cell.arm = static_cast<int>(a);
        cell.step = step;
        cell.expected = static_cast<int>(plan.seeds.size());
        std::map<std::string, std::map<std::string, std::vector<std::optional<double>>>> values;
        for (size_t k = 0; k < plan.seeds.size(); ++k) {
          auto found = by_cell.find(std::make_tuple(d, static_cast<int>(a), plan.seeds[k]));
          const StudyChildStatus* status = found == by_cell.end() ? nullptr : found->second;
          const StudyChildResult* result = nullptr;
          if (status != nullptr && by_index.count(status->index)) result = by_index.at(status->index);
          const EvalReport* report = nullptr;
          if (result != nullptr && result->state == "SUCCEEDED") {
            auto e = result->evals.find(step);
            if (e != result->evals.end()) report = &e->second;
          }
          if (report == nullptr) {
            std::string why = status == nullptr || status->job_id.empty() ? "not created" : status->job_id + " " + status->state;
            if (status != nullptr && status->state == "SUCCEEDED") why += " without a score at this step";
            if (status != nullptr && !status->message.empty()) why += " (" + status->message + ")";
            cell.missing.push_back(absl::StrCat("seed ", plan.seeds[k], ": ", why));
          }
          for (const char* metric : kStudyMetrics) {
            const std::map<std::string, double> scores =
                report != nullptr ? ChildScores(*report, metric) : std::map<std::string, double>{};
            for (const auto& [key, v] : scores) class_keys.insert(key);
            // Slots for every class key this cell has seen; filled per seed.
            for (const auto& [key, v] : scores) {
              auto& slot = values[metric][key];
              slot.resize(plan.seeds.size());
              slot[k] = v;
            }
          }
        }
        for (auto& [metric, by_class] : values) {
          for (auto& [key, per_seed] : by_class) {
            StudyValues sv;
            sv.per_seed = per_seed;
            sv.per_seed.resize(plan.seeds.size());
            std::vector<double> present;
            for (const auto& v : sv.per_seed) {
              if (v) present.push_back(*v);
            }
            sv.summary = Summarise(present);
            cell.metrics[metric][key] = std::move(sv);
          }
        }
        r.cells.push_back(std::move(cell));
      }
    }
  }
  r.classes.push_back("mean");
  std::vector<int> numeric;
  for (const std::string& k : class_keys) {
    int c = 0;
    if (k != "mean" && absl::SimpleAtoi(k, &c)) numeric.push_back(c);
  }
  std::sort(numeric.begin(), numeric.end());  // "2" before "10"
  for (int c : numeric) r.classes.push_back(std::to_string(c));

  // Tests at the last eval step (a loop study: at every budget), per dataset,
  // metric, class and pair of arms.
  std::vector<int64_t> tested = {plan.eval_at.back()};
  if (plan.loop) tested = plan.eval_at;
  for (const int64_t last : tested) {
  for (const std::string& d : plan.datasets) {
    for (size_t a = 0; a < plan.arms.size(); ++a) {
      for (size_t b = a + 1; b < plan.arms.size(); ++b) {
        const StudyCell* ca = FindStudyCell(r, d, static_cast<int>(a), last);
        const StudyCell* cb = FindStudyCell(r, d, static_cast<int>(b), last);
        for (const char* metric : kStudyMetrics) {
          for (const std::string& key : r.classes) {
            auto present = [&](const StudyCell* c) {
              std::vector<double> v;
              auto m = c->metrics.find(metric);
              if (m == c->metrics.end()) return v;
              auto k = m->second.find(key);
              if (k == m->second.end()) return v;
              for (const auto& x : k->second.per_seed) {
                if (x) v.push_back(*x);
              }
              return v;
            };
            const std::vector<double> x = present(ca), y = present(cb);
            if (x.empty() && y.empty()) continue;
            StudyTest t;
            t.dataset = d;
            t.metric = metric;
            t.cls = key;
            t.a = static_cast<int>(a);
            t.b = static_cast<int>(b);
            t.step = last;
            t.result = MannWhitneyU(x, y);
            r.tests.push_back(std::move(t));
          }
        }
      }
    }
  }
  }
  return r;
}

const StudyCell* FindStudyCell(const StudyReport& r, const std::string& dataset, int arm, int64_t step) {
  for (const StudyCell& c : r.cells) {
    if (c.dataset == dataset && c.arm == arm && c.step == step) return &c;
  }
  return nullptr;
}

// --- JSON ------------------------------------------------------------------------
namespace {

json SummaryJson(const Summary& s) {
  return {{"n", s.n}, {"mean", s.mean}, {"std", s.std}, {"median", s.median}, {"min", s.min}, {"max", s.max}};
}

Summary SummaryFromJson(const json& j) {
  Summary s;
  s.n = j.at("n").get<int>();
  s.mean = j.at("mean").get<double>();
  s.std = j.at("std").get<double>();
  s.median = j.at("median").get<double>();
  s.min = j.at("min").get<double>();
  s.max = j.at("max").get<double>();
  return s;
}

}  // namespace

std::string EncodeStudyReport(const StudyReport& r) {
  json j;
  j["v"] = kRecordVersion;
  j["study"] = r.study;
  j["state"] = r.state;
  j["complete"] = r.complete;
  j["children_total"] = r.children_total;
  j["children_ended"] = r.children_ended;
  j["children_succeeded"] = r.children_succeeded;
  j["datasets"] = r.datasets;
  j["arms"] = json::array();
  for (const StudyArm& a : r.arms) {
    json arm = {{"init", a.init}, {"name", a.name}};
    if (!a.strategy.empty()) arm["strategy"] = a.strategy;
    j["arms"].push_back(arm);
  }
  j["axis"] = r.axis;
  j["seeds"] = r.seeds;
  j["eval_at"] = r.eval_at;
  j["classes"] = r.classes;
  j["children"] = json::array();
  for (const StudyChildStatus& c : r.children) {
    j["children"].push_back({{"index", c.index}, {"job", c.job_id}, {"state", c.state}, {"message", c.message},
                             {"dataset", c.dataset}, {"arm", c.arm}, {"seed", c.seed}, {"steps", c.steps}});
  }
  j["cells"] = json::array();
  for (const StudyCell& c : r.cells) {
    json cell = {{"dataset", c.dataset}, {"arm", c.arm}, {"step", c.step}, {"expected", c.expected},
                 {"missing", c.missing}, {"metrics", json::object()}};
    for (const auto& [metric, by_class] : c.metrics) {
      for (const auto& [key, v] : by_class) {
        json values = json::array();
        for (const auto& x : v.per_seed) values.push_back(x ? json(*x) : json(nullptr));
        cell["metrics"][metric][key] = {{"values", values}, {"summary", SummaryJson(v.summary)}};
      }
    }
    j["cells"].push_back(std::move(cell));
  }
  j["tests"] = json::array();
  for (const StudyTest& t : r.tests) {
    const MannWhitney& m = t.result;
    j["tests"].push_back({{"dataset", t.dataset}, {"metric", t.metric}, {"class", t.cls}, {"a", t.a}, {"b", t.b},
                          {"step", t.step}, {"n1", m.n1}, {"n2", m.n2}, {"u1", m.u1}, {"u2", m.u2}, {"p", m.p},
                          {"ties", m.ties}, {"method", m.method}, {"rank_biserial", m.rank_biserial},
                          {"common_language", m.common_language}, {"mark", SignificanceMark(m.p)}});
  }
  return j.dump(1) + "\n";
}

absl::StatusOr<StudyReport> DecodeStudyReport(const std::string& text, const std::string& where) {
  try {
    const json j = json::parse(text);
    if (j.value("v", 1) > kRecordVersion) {
      return absl::UnimplementedError(absl::StrCat(where, ": record version ", j.value("v", 1), " is newer than ",
                                                   kRecordVersion, " (upgrade the CLI)"));
    }
    StudyReport r;
    r.study = j.at("study").get<std::string>();
    r.state = j.value("state", "");
    r.complete = j.at("complete").get<bool>();
    r.children_total = j.at("children_total").get<int>();
    r.children_ended = j.at("children_ended").get<int>();
    r.children_succeeded = j.at("children_succeeded").get<int>();
    r.datasets = j.at("datasets").get<std::vector<std::string>>();
    for (const json& a : j.at("arms")) {
      r.arms.push_back({a.at("init").get<std::string>(), a.at("name").get<std::string>(), a.value("strategy", "")});
    }
    r.axis = j.value("axis", "iteration");
    r.seeds = j.at("seeds").get<std::vector<int64_t>>();
    r.eval_at = j.at("eval_at").get<std::vector<int64_t>>();
    r.classes = j.at("classes").get<std::vector<std::string>>();
    for (const json& c : j.at("children")) {
      StudyChildStatus s;
      s.index = c.at("index").get<int>();
      s.job_id = c.at("job").get<std::string>();
      s.state = c.at("state").get<std::string>();
      s.message = c.at("message").get<std::string>();
      s.dataset = c.at("dataset").get<std::string>();
      s.arm = c.at("arm").get<int>();
      s.seed = c.at("seed").get<int64_t>();
      s.steps = c.at("steps").get<std::vector<int64_t>>();
      r.children.push_back(std::move(s));
    }
    for (const json& c : j.at("cells")) {
      StudyCell cell;
      cell.dataset = c.at("dataset").get<std::string>();
      cell.arm = c.at("arm").get<int>();
      cell.step = c.at("step").get<int64_t>();
      cell.expected = c.at("expected").get<int>();
      cell.missing = c.at("missing").get<std::vector<std::string>>();
      for (const auto& [metric, by_class] : c.at("metrics").items()) {
        for (const auto& [key, v] : by_class.items()) {
          StudyValues sv;
          for (const json& x : v.at("values")) sv.per_seed.push_back(x.is_null() ? std::nullopt : std::optional<double>(x.get<double>()));
          sv.summary = SummaryFromJson(v.at("summary"));
          cell.metrics[metric][key] = std::move(sv);
        }
      }
      r.cells.push_back(std::move(cell));
    }
    for (const json& t : j.at("tests")) {
      StudyTest s;
      s.dataset = t.at("dataset").get<std::string>();
      s.metric = t.at("metric").get<std::string>();
      s.cls = t.at("class").get<std::string>();
      s.a = t.at("a").get<int>();
      s.b = t.at("b").get<int>();
      s.step = t.at("step").get<int64_t>();
      MannWhitney& m = s.result;
      m.n1 = t.at("n1").get<int>();
      m.n2 = t.at("n2").get<int>();
      m.u1 = t.at("u1").get<double>();
      m.u2 = t.at("u2").get<double>();
      m.p = t.at("p").get<double>();
      m.ties = t.at("ties").get<bool>();
      m.method = t.at("method").get<std::string>();
      m.rank_biserial = t.at("rank_biserial").get<double>();
      m.common_language = t.at("common_language").get<double>();
      r.tests.push_back(std::move(s));
    }
    // Indices into arms must hold (the readers index with them).
    const int arms = static_cast<int>(r.arms.size());
    auto bad = [&](int a) { return a < 0 || a >= arms; };
    for (const StudyChildStatus& c : r.children) {
      if (bad(c.arm)) return absl::DataLossError(absl::StrCat(where, ": children: arm ", c.arm, " of ", arms));
    }
    for (const StudyCell& c : r.cells) {
      if (bad(c.arm)) return absl::DataLossError(absl::StrCat(where, ": cells: arm ", c.arm, " of ", arms));
    }
    for (const StudyTest& t : r.tests) {
      if (bad(t.a) || bad(t.b)) return absl::DataLossError(absl::StrCat(where, ": tests: arms ", t.a, ", ", t.b));
    }
    if (r.eval_at.empty()) return absl::DataLossError(absl::StrCat(where, ": eval_at: empty"));
    return r;
  } catch (const json::exception& e) {
    return absl::DataLossError(absl::StrCat(where, ": not a study record: ", e.what()));
  }
}

std::string StudyCsv(const StudyReport& r) {
  std::ostringstream out;
  out.precision(17);
  out << "dataset,init,step,metric,class,n,expected,mean,std,median,min,max";
  for (int64_t seed : r.seeds) out << ",seed_" << seed;
  out << "\n";
  for (const StudyCell& c : r.cells) {
    for (const char* metric : kStudyMetrics) {
      auto m = c.metrics.find(metric);
      if (m == c.metrics.end()) continue;
      for (const std::string& key : r.classes) {
        auto v = m->second.find(key);
        if (v == m->second.end()) continue;
        const Summary& s = v->second.summary;
        out << CsvField(c.dataset) << "," << CsvField(r.arms[c.arm].name) << "," << c.step << "," << metric << "," << key << "," << s.n
            << "," << c.expected << "," << s.mean << "," << s.std << "," << s.median << "," << s.min << "," << s.max;
        for (const auto& x : v->second.per_seed) {
          out << ",";
          if (x) out << *x;
        }
        out << "\n";
      }
    }
  }
  return out.str();
}

}  // namespace retina
