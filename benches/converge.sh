#!/usr/bin/env bash
# Configuration management: steward vs Ansible (and Puppet when installed) on one
# workload, in one run, printing the ratios.
#
#   benches/converge.sh [RUNS]     default 3 runs per steward/Puppet measurement (median)
#
# Workload (the same for every tool, each in its own fresh directory on this host):
# 50 directories, 200 files rendered from one Jinja2-style template that uses a fact
# (the host name) and a 10-iteration loop, and 20 line edits in 20 existing files
# (10 replace a line matched by a regexp, 10 append a line). "first" converges a fresh
# tree; "no-change" runs again on the converged tree. Ansible runs once per measurement
# (a run takes minutes); its playbook uses loops, gather_facts and the local connection,
# as a user would write it. Puppet uses an EPP template and stdlib's file_line.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${1:-3}
BENCH_NAME=converge source benches/common.sh
command -v ansible-playbook >/dev/null || { echo "missing ansible (apt-get install ansible)" >&2; exit 2; }
PUPPET=""
if command -v puppet >/dev/null && [ -d /usr/share/puppet/modules/stdlib ]; then PUPPET=yes; fi

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

# Fresh tree for one tool: the 20 files the line edits work on.
reset_tree() { # dir
  rm -rf "$1"; mkdir -p "$1/lines"
  for i in $(seq 0 19); do printf 'key = old\nother = 1\n' >"$1/lines/f$i.conf"; done
}

# --- steward -----------------------------------------------------------------------------
S=$WORK/steward; mkdir -p "$S"
cat >"$S/file.j2" <<'T'
# host {{ facts.hostname }}, file {{ idx }}
{% for i in range(10) %}
line {{ i }} of file {{ idx }}
{% endfor %}
T
{
  printf '[steward]\nstate_dir = "state"\n\n[converge.bench]\n'
  printf 'directory = [\n'
  for d in $(seq 0 49); do printf '  { path = "%s/t-steward/d%d" },\n' "$WORK" "$d"; done
  printf ']\ntemplate = [\n'
  for f in $(seq 0 199); do
    printf '  { path = "%s/t-steward/d%d/f%d.conf", source = "file.j2", vars = { idx = %d } },\n' "$WORK" $((f % 50)) "$f" "$f"
  done
  printf ']\nline = [\n'
  for i in $(seq 0 9); do printf '  { path = "%s/t-steward/lines/f%d.conf", line = "key = new", regexp = "^key = " },\n' "$WORK" "$i"; done
  for i in $(seq 10 19); do printf '  { path = "%s/t-steward/lines/f%d.conf", line = "added = yes" },\n' "$WORK" "$i"; done
  printf ']\n'
} >"$S/steward.toml"
steward_run() { "$STEWARD" -f "$S/steward.toml" converge apply >/dev/null; }

# --- Ansible -----------------------------------------------------------------------------
A=$WORK/ansible; mkdir -p "$A"
sed 's/facts\.hostname/ansible_hostname/' "$S/file.j2" >"$A/file.j2"
cat >"$A/play.yml" <<Y
- hosts: localhost
  connection: local
  gather_facts: true
  tasks:
    - name: directories
      ansible.builtin.file: { path: "$WORK/t-ansible/d{{ item }}", state: directory }
      loop: "{{ range(0, 50) | list }}"
    - name: files
      ansible.builtin.template: { src: "$A/file.j2", dest: "$WORK/t-ansible/d{{ item % 50 }}/f{{ item }}.conf" }
      vars: { idx: "{{ item }}" }
      loop: "{{ range(0, 200) | list }}"
    - name: replaced lines
      ansible.builtin.lineinfile: { path: "$WORK/t-ansible/lines/f{{ item }}.conf", regexp: "^key = ", line: "key = new" }
      loop: "{{ range(0, 10) | list }}"
    - name: appended lines
      ansible.builtin.lineinfile: { path: "$WORK/t-ansible/lines/f{{ item }}.conf", line: "added = yes" }
      loop: "{{ range(10, 20) | list }}"
Y
export ANSIBLE_LOCAL_TEMP=$A/tmp ANSIBLE_HOME=$A/home ANSIBLE_NOCOLOR=1 ANSIBLE_RETRY_FILES_ENABLED=0
ansible_run() { ansible-playbook -i localhost, "$A/play.yml" >"$A/last.log" 2>&1; }

# --- Puppet ------------------------------------------------------------------------------
P=$WORK/puppet; mkdir -p "$P/conf" "$P/var"
cat >"$P/file.epp" <<'T'
<%- | $idx | -%>
# host <%= $facts['networking']['hostname'] %>, file <%= $idx %>
<% Integer[0, 9].each |$i| { -%>
line <%= $i %> of file <%= $idx %>
<% } -%>
T
cat >"$P/site.pp" <<PP
\$root = '$WORK/t-puppet'
Integer[0, 49].each |\$d| { file { "\${root}/d\${d}": ensure => directory } }
Integer[0, 199].each |\$f| {
  \$d = \$f % 50
  file { "\${root}/d\${d}/f\${f}.conf":
    ensure  => file,
    content => epp('$P/file.epp', { 'idx' => \$f }),
  }
}
Integer[0, 9].each |\$i| {
  file_line { "replace \${i}": path => "\${root}/lines/f\${i}.conf", line => 'key = new', match => '^key = ' }
}
Integer[10, 19].each |\$i| {
  file_line { "append \${i}": path => "\${root}/lines/f\${i}.conf", line => 'added = yes' }
}
PP
puppet_run() {
  puppet apply --confdir "$P/conf" --vardir "$P/var" --modulepath /usr/share/puppet/modules \
    --detailed-exitcodes "$P/site.pp" >"$P/last.log" 2>&1 || [ $? -eq 2 ]
}

# --- measure -----------------------------------------------------------------------------
measure() { # tool runs -> "first nochange" medians in seconds
  local tool=$1 runs=$2 firsts=() nochanges=() t0 t1 r
  for ((r = 0; r < runs; r++)); do
    reset_tree "$WORK/t-$tool"
    rm -rf "$S/state"
    t0=$(now); "${tool}_run"; t1=$(now); firsts+=("$(elapsed "$t0" "$t1")")
    t0=$(now); "${tool}_run"; t1=$(now); nochanges+=("$(elapsed "$t0" "$t1")")
  done
  echo "$(printf '%s\n' "${firsts[@]}" | median) $(printf '%s\n' "${nochanges[@]}" | median)"
}

# Bare floor: one process doing only the file operations (no planning, no diffing).
cat >"$WORK/floor.py" <<'F'
import os, re, socket, sys
root = sys.argv[1]
host = socket.gethostname()
for d in range(50):
    os.makedirs(f"{root}/d{d}", exist_ok=True)
for f in range(200):
    body = f"# host {host}, file {f}\n" + "".join(f"line {i} of file {f}\n" for i in range(10))
    p = f"{root}/d{f % 50}/f{f}.conf"
    try:
        same = open(p).read() == body
    except FileNotFoundError:
        same = False
    if not same:
        open(p, "w").write(body)
for i in range(20):
    p = f"{root}/lines/f{i}.conf"
    lines = open(p).read().splitlines()
    want = "key = new" if i < 10 else "added = yes"
    if want not in lines:
        if i < 10:
            lines = [want if re.match("^key = ", l) else l for l in lines]
        else:
            lines.append(want)
        open(p, "w").write("\n".join(lines) + "\n")
F
floor_run() { python3 "$WORK/floor.py" "$WORK/t-floor"; }

echo "converge benchmark: 50 directories, 200 templated files, 20 line edits"
read -r floor_first floor_none < <(measure floor "$RUNS")
read -r st_first st_none < <(measure steward "$RUNS")
# Every file is there and the second run planned nothing.
[ "$(find "$WORK/t-steward" -name 'f*.conf' -path '*/d*' | wc -l)" -eq 200 ] || { echo "steward did not write 200 files" >&2; exit 1; }
"$STEWARD" -f "$S/steward.toml" converge plan >/dev/null || { echo "steward's plan after apply is not empty" >&2; exit 1; }
read -r an_first an_none < <(measure ansible 1)
grep -q "changed=0" "$A/last.log" || { echo "ansible's second run changed something" >&2; tail "$A/last.log" >&2; exit 1; }
cmp -s "$WORK/t-steward/d3/f53.conf" <(sed "s|$WORK/t-ansible|$WORK/t-steward|" "$WORK/t-ansible/d3/f53.conf") \
  || { echo "steward and ansible rendered different files:" >&2; diff "$WORK/t-steward/d3/f53.conf" "$WORK/t-ansible/d3/f53.conf" >&2; exit 1; }
if [ -n "$PUPPET" ]; then read -r pu_first pu_none < <(measure puppet "$RUNS"); fi

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a / b }'; }
printf '\n%-22s %10s %12s\n' tool "first (s)" "no-change (s)"
printf '%-22s %10s %12s\n' "bare script (floor)" "$floor_first" "$floor_none"
printf '%-22s %10s %12s\n' steward "$st_first" "$st_none"
printf '%-22s %10s %12s\n' "ansible $(ansible --version | head -n 1 | grep -o '[0-9.]*' | head -n 1)" "$an_first" "$an_none"
[ -n "$PUPPET" ] && printf '%-22s %10s %12s\n' "puppet $(puppet --version)" "$pu_first" "$pu_none"
echo
echo "ansible / steward:  first $(ratio "$an_first" "$st_first")x, no-change $(ratio "$an_none" "$st_none")x"
[ -n "$PUPPET" ] && echo "puppet / steward:   first $(ratio "$pu_first" "$st_first")x, no-change $(ratio "$pu_none" "$st_none")x"
echo "steward / floor:    first $(ratio "$st_first" "$floor_first")x, no-change $(ratio "$st_none" "$floor_none")x"
