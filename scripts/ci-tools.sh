#!/usr/bin/env bash
# What the tests need beyond cargo, installed where missing (Debian/Ubuntu). .ci/run installs it all before the
# tests, since with CI set a test that finds a tool missing fails (enigma_testkit::skip_or_fail);
# ci-aarch64.sh, ci-firmware.sh and ci-fuzz.sh install their parts, so each also works alone.
#
#   scripts/ci-tools.sh [aarch64] [firmware] [defmt-print] [words] [fuzz] [netns] [speech]     (no argument: all seven)
#
# aarch64: qemu-user, the aarch64 cross gcc and libc, the aarch64-unknown-linux-gnu target (the Pi path);
# firmware: qemu-system-arm and the thumbv7em/thumbv6m targets; defmt-print: `cargo install defmt-print`
# (about 2.5 minutes of CPU on 2 cores), to decode the firmware's defmt log; words: /usr/share/dict/words
# (wamerican), the dictionary the built-in model's readability test checks its words against; fuzz: a C++
# compiler (g++), which libfuzzer-sys needs to compile libFuzzer for scripts/ci-fuzz.sh; netns: iproute2's `ip`,
# with which host-tools/cli/tests/devices.rs joins two network namespaces by veth to test mDNS discovery (as root);
# speech: espeak-ng, the phonemizer of the Piper voice and the fallback voice (host-tools/voice), which also
# synthesises the clips host-tools/cli/tests/whisper.rs transcribes.
set -euo pipefail
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
parts=("$@")
[ ${#parts[@]} -gt 0 ] || parts=(aarch64 firmware defmt-print words fuzz netns speech)
packages=()
targets=()
defmt_print=0
for part in "${parts[@]}"; do
    case "$part" in
    aarch64)
        command -v qemu-aarch64 >/dev/null || packages+=(qemu-user)
        command -v aarch64-linux-gnu-gcc >/dev/null || packages+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross)
        targets+=(aarch64-unknown-linux-gnu)
        ;;
    firmware)
        command -v qemu-system-arm >/dev/null || packages+=(qemu-system-arm)
        targets+=(thumbv7em-none-eabihf thumbv6m-none-eabi)
        ;;
    defmt-print) command -v defmt-print >/dev/null || defmt_print=1 ;;
    words) [ -f /usr/share/dict/words ] || packages+=(wamerican) ;;
    fuzz) command -v c++ >/dev/null || packages+=(g++) ;;
    netns) command -v ip >/dev/null || packages+=(iproute2) ;;
    speech) command -v espeak-ng >/dev/null || packages+=(espeak-ng) ;;
    *) echo "ci-tools.sh: unknown part '$part' (aarch64, firmware, defmt-print, words, fuzz, netns, speech)" >&2; exit 2 ;;
    esac
done
if [ ${#packages[@]} -gt 0 ]; then
    as_root apt-get update -qq
    as_root apt-get install -y -qq "${packages[@]}" >/dev/null
fi
[ ${#targets[@]} -eq 0 ] || rustup target add "${targets[@]}"
[ "$defmt_print" = 0 ] || cargo install defmt-print --locked --quiet
