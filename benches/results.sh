# Sourced by the side-by-side bench scripts: each writes what it measured to benches/results/NAME.md, which
# the docs quote (benches/quote_results.py copies the tables into them; `--check` fails when they differ).
#
#   results_begin NAME "TITLE" "COMMAND"   # starts the file: commit, CPU, date, load, the exact command
#   ... | results_block                    # appends stdin as a ```text block (what the script printed)
#   results_line "TEXT"                    # appends a line of markdown
#   results_end                            # the load average after the run; says where the file is
#
# The commit is `git rev-parse --short HEAD`, with "-dirty" when tracked or untracked files differ from it
# (results files themselves excepted, so one script's fresh results do not mark the next script's run dirty).

results_begin() {
    RESULTS_FILE="benches/results/$1.md"
    mkdir -p benches/results
    local commit cpu flags f
    commit=$(git rev-parse --short HEAD 2>/dev/null || echo "not a git checkout")
    if [ -n "$(git status --porcelain -- . ':(exclude)benches/results' 2>/dev/null)" ]; then
        commit="$commit-dirty"
    fi
    cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -n 1)
    flags=""
    for f in avx2 fma f16c avx512f avx512_vnni asimd asimddp; do
        grep -qw "$f" /proc/cpuinfo 2>/dev/null && flags="$flags $f"
    done
    {
        printf '# %s\n\n' "$2"
        printf -- '- commit: %s\n' "$commit"
        printf -- '- CPU: %s (`lscpu` model name), %s CPUs, flags:%s\n' "${cpu:-unknown}" "$(nproc)" "${flags:- none of the SIMD tiers}"
        printf -- '- date: %s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
        printf -- '- command: `%s`\n' "$3"
        printf -- '- load average before the run: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
        [ -z "${RESULTS_NOTE:-}" ] || printf -- '- note: %s\n' "$RESULTS_NOTE"
        printf '\n'
    } >"$RESULTS_FILE"
}

results_block() {
    {
        printf '```text\n'
        cat
        printf '```\n\n'
    } >>"$RESULTS_FILE"
}

results_line() {
    printf '%s\n' "$1" >>"$RESULTS_FILE"
}

results_end() {
    printf -- '- load average after the run: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)" >>"$RESULTS_FILE"
    echo "results written to $RESULTS_FILE" >&2
}
