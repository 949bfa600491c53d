// `retina segment`: one image, file or store region answered now by a model
// server (retina-serve; docs/serving.md), with the CLI's token and CA.
//
//   retina segment --server HOST:PORT --model NAME -i image.tif -o labels.tif
//   retina segment --server HOST:PORT --model NAME --volume vols/em.ome.zarr \
//       --region 0:64,0:512,0:512 -o labels.tif            (labels here)
//   ... --volume vols/em.ome.zarr --region ... -o view.ome.zarr   (written by the
//       server into <store>/served/<user>/view.ome.zarr, region by region)
#pragma once

#include "common/cli.h"
#include "services/cli/cli_client.h"

namespace retina::cli {

void AddSegmentCommand(Cli& cli, const ConnectFlags* connect);

}  // namespace retina::cli
