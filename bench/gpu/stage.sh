#!/bin/bash
# Here, before a device call: copy the GPU rig (vLLM's CUDA build and its helpers, a measuring tool
# kept outside the product) into the ignored folder .gpu/ of this checkout, which the call carries.
#   bench/gpu/stage.sh [RIG_DIR]      (default ../shared/gpu)
# Then: device run, carry [".gpu"], command `bash bench/gpu/run.sh serve-ab` (or `replicas`).
set -eu
cd "$(dirname "$0")/../.."
RIG=${1:-../shared/gpu}
for f in bin.tar.xz py.tar.xz make_model.py sanity.py; do
  [ -f "$RIG/$f" ] || { echo "stage.sh: $RIG/$f is missing (the rig: README.md there)" >&2; exit 2; }
done
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.gpu/' >> .git/info/exclude; }
rm -rf .gpu; mkdir .gpu
cp "$RIG"/bin.tar.xz "$RIG"/py.tar.xz "$RIG"/make_model.py "$RIG"/sanity.py .gpu/
# The device machine gets a copy of the files, not the repository: record what is being measured.
{ git rev-parse HEAD; git status --short -- runtime operator bench | head -20; } > .gpu/COMMIT
echo "staged $(du -sh .gpu | cut -f1) in .gpu/ at $(head -1 .gpu/COMMIT)"
