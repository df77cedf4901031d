#!/usr/bin/env bash
# The probes of RESULTS.md (d) on SmolLM2-135M-Instruct; each writes runs/probes-*/probe_<name>.json.
set -euo pipefail
opdkit probe pair   --config examples/opd_smollm2.yaml   --out runs/probes-opd
opdkit probe prefix --config examples/opd_smollm2.yaml   --out runs/probes-opd  --prompts 32
opdkit probe pair   --config examples/opsd_spanish.yaml  --mode self-distill --out runs/probes-opsd-spanish
opdkit probe pi     --config examples/opsd_spanish.yaml  --out runs/probes-opsd-spanish
opdkit probe pi     --config examples/opsd_answer_pi.yaml --out runs/probes-opsd-answer-pi
