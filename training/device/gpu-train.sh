#!/usr/bin/env bash
# Train the multilingual translator on a lent GPU (the session's `device` tool), one command long.
# Prepared for the sessions that are lent one; on these 2-core machines the same run takes days.
#
#   here:        training/device/gpu-train.sh prepare            # the corpora it reads -> .device/data (~18 MB)
#   on the GPU:  run(command="training/device/gpu-train.sh train 480", carry=[".device"], timeout_s=570)
#   back here:   the files under files_at: multi/weights.pt (fp16 weights), multi/spm.model, multi/log.csv
#                -> python -m training release --config training/configs/general-multi.toml \
#                     --run-dir <that folder> --checkpoint <that folder>/weights.pt --out model/multi --force
#
# "train SECONDS" stops training with SIGTERM after SECONDS (the loop saves last.pt), then writes
# the weights alone into $OUT. It starts from model/multi/weights.pt when that exists.
set -euo pipefail
cd "$(dirname "$0")/../.."
what=${1:?prepare or train}
if [ "$what" = prepare ]; then
  mkdir -p .device/data
  for d in tatoeba-de-en tatoeba-fr-en tatoeba-cs-en zh-en multi30k newstest; do
    cp -r "../shared/data/$d" .device/data/
  done
  sed 's#\.\./shared/data#.device/data#g' training/configs/general-multi.toml > .device/general-multi.toml
  du -sh .device
  exit 0
fi
seconds=${2:-480}
out=${OUT:?run this through the device tool: it sets OUT}
init=()
[ -f model/multi/weights.pt ] && init=(--set train.init_from=model/multi/weights.pt --set train.warmup_steps=300)
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(0))"
set +e
timeout -s TERM --kill-after=60 "$seconds" python -m training train --config .device/general-multi.toml \
  --run-dir "$out/multi" --device cuda --set train.max_tokens=32000 --set train.lr=2e-3 \
  --set train.checkpoint_every=500 --set train.snapshot_every=0 "${init[@]}"
set -e
python - "$out/multi" <<'PY'
import sys
from pathlib import Path
from training.checkpoint import export_weights
run = Path(sys.argv[1])
export_weights(run / "last.pt", run / "weights.pt")
for big in [run / "last.pt", run / "best.pt", *run.glob("epoch*.pt"), *run.glob("step*.pt")]:
    big.unlink(missing_ok=True)  # optimizer state: too large to bring back
print("weights:", run / "weights.pt", (run / "weights.pt").stat().st_size)
PY
