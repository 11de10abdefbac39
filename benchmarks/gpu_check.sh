#!/bin/bash
# GPU checks (issues 5 and 8), for the device tool: run with carry [".whl", ".gpu_data"] where .whl holds
# cp312 wheels of monai, pydicom, nibabel, highdicom (see /work/.library/device/README.md) and .gpu_data/busi-dev
# a copy of ../shared/data/busi-dev (both ignored by git: .git/info/exclude). Command: bash benchmarks/gpu_check.sh
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee $OUT/gpu.txt
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" | tee -a $OUT/gpu.txt
(cd tests && timeout 150 python3 -m pytest -q -p no:cacheprovider test_cuda.py -x 2>&1 | tail -15) | tee $OUT/tests.txt
timeout 90 python3 -m benchmarks.throughput --device cuda --amp --batch 8 2>&1 | tail -8 | tee $OUT/tp_amp_b8.txt
timeout 90 python3 -m benchmarks.throughput --device cuda --amp --batch 64 2>&1 | tail -8 | tee $OUT/tp_amp_b64.txt
timeout 90 python3 -m benchmarks.throughput --device cuda --batch 64 2>&1 | tail -8 | tee $OUT/tp_fp32_b64.txt
cp benchmarks/results/throughput.jsonl $OUT/ 2>/dev/null
export MEDSEG_CACHE=/tmp/cache
timeout 260 python3 -c "from medseg.cli import main; main()" train .gpu_data/busi-dev --time-budget 3m --out /tmp/gpu_busi 2>&1 | tail -22 | tee $OUT/busi_train.txt
cp /tmp/gpu_busi/log.csv $OUT/busi_log.csv 2>/dev/null
timeout 60 python3 -c "from medseg.cli import main; main()" evaluate /tmp/gpu_busi --no-tune 2>&1 | head -30 | tee $OUT/busi_eval.txt
