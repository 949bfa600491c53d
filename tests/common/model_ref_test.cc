// Model references and the registry's store index (common/model_ref.h): the
// forms weights fields accept, and errors that name the field and say what
// exists.
#include "common/model_ref.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/file_util.h"

namespace retina {
namespace {
namespace fs = std::filesystem;
using ::testing::HasSubstr;

TEST(ModelRef, EveryFormParsesAndBadOnesAreNamed) {
  absl::StatusOr<ModelRef> r = ParseModelRef("model:mito-net", "f");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->name, "mito-net");
  EXPECT_EQ(r->version, 0);
  r = ParseModelRef("mito-net:v12", "f");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->version, 12);
  r = ParseModelRef("model:mito-net@prod", "f");
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->tag, "prod");
  for (const char* bad : {"model:", "model:Mito", "model:a:12", "model:a:v0", "model:a@", "model:../x", "model:-a",
                          "model:a/b"}) {
    absl::StatusOr<ModelRef> b = ParseModelRef(bad, "finetune.init");
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(b.status().message(), HasSubstr("finetune.init")) << bad;
  }
  EXPECT_TRUE(IsModelRef("model:x"));
  EXPECT_FALSE(IsModelRef("models/x/v1"));
  EXPECT_EQ(ModelId("x", 3), "x:v3");
}

TEST(ModelRef, ResolvesThroughTheIndexAndSaysWhatExists) {
  const fs::path store = fs::path(::testing::TempDir()) / UniqueTempName("model-ref-");
  ModelIndex index;
  index.name = "net";
  index.versions = {1, 3};
  index.tags = {{"prod", 1}};
  ASSERT_TRUE(CreateDirectories(ModelDir(store, "net")).ok());
  ASSERT_TRUE(WriteFileAtomic(ModelIndexPath(store, "net"), EncodeModelIndex(index)).ok());
  EXPECT_EQ(*ResolveModelRef(store, "model:net", "f"), store / "models/net/v3");  // the newest
  EXPECT_EQ(*ResolveModelRef(store, "model:net@prod", "f"), store / "models/net/v1");
  EXPECT_EQ(*ResolveModelRef(store, "model:net:v1", "f"), store / "models/net/v1");
  absl::Status s = ResolveModelRef(store, "model:net:v2", "infer.weights").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("infer.weights"));
  EXPECT_THAT(s.message(), HasSubstr("versions: 1, 3"));
  s = ResolveModelRef(store, "model:net@dev", "f").status();
  EXPECT_THAT(s.message(), HasSubstr("prod->v1"));
  s = ResolveModelRef(store, "model:other", "f").status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(s.message(), HasSubstr("retina models list"));
  ASSERT_TRUE(WriteFileAtomic(ModelIndexPath(store, "net"), "{not json").ok());
  EXPECT_EQ(ResolveModelRef(store, "model:net", "f").status().code(), absl::StatusCode::kDataLoss);
  fs::remove_all(store);
}

}  // namespace
}  // namespace retina
