#!/usr/bin/env bash
# Assemble a Hadoop runtime with the release tarball's layout from Apache's own artifacts on Maven
# Central, for clusters (the lab, CI) that reach Maven Central but not an Apache download mirror:
#
#   build.sh OUT_DIR          -> prints OUT_DIR/hadoop-<version>-maven-<inputs>.tar.gz (built once, then cached)
#   build.sh --pin OUT_DIR    -> the same, rewriting SHA256SUMS from what Maven resolved
#
# Versions are pinned in pom.xml; every jar's sha256 is pinned in SHA256SUMS and checked (Maven also
# checks Central's own checksums, -C).  <inputs> hashes this directory, so a changed launcher or pin
# gives a new archive (and a new versioned directory on the nodes).  Layout: bin/{hadoop,hdfs,yarn,mapred}
# (our launcher, see bin/hadoop: Apache's shell scripts are not on Maven Central), etc/hadoop/,
# share/hadoop/{common,common/lib,hdfs,hdfs/webapps,yarn,mapreduce}.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
pin=0
if [[ ${1:-} == --pin ]]; then pin=1; shift; fi
[[ $# -eq 1 ]] || { echo "usage: $0 [--pin] OUT_DIR" >&2; exit 2; }
out=$(mkdir -p "$1" && cd "$1" && pwd)
command -v mvn >/dev/null || { echo "hadoop runtime: mvn not found: install Maven (apt-get install maven) and Java 17" >&2; exit 2; }

version=$(sed -n 's:.*<hadoop.version>\(.*\)</hadoop.version>.*:\1:p' "$here/pom.xml")
inputs=$(cd "$here" && cat pom.xml SHA256SUMS build.sh bin/hadoop etc/log4j.properties | sha256sum | cut -c1-8)
name=hadoop-$version-maven-$inputs
archive=$out/$name.tar.gz
if [[ -f $archive && $pin -eq 0 ]]; then echo "$archive"; exit 0; fi

start=$SECONDS
work=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$work"' EXIT
mvn=(mvn -B -q -C -Dstyle.color=never -f "$here/pom.xml" "-Dmaven.repo.local=$out/m2")
"${mvn[@]}" dependency:copy-dependencies -DincludeScope=runtime "-DoutputDirectory=$work/jars" >&2 \
  || { echo "hadoop runtime: Maven could not resolve the artifacts (is Maven Central reachable?)" >&2; exit 1; }
# The NameNode's and DataNode's web UIs (webapps/) ship in hadoop-hdfs's test jar only.
"${mvn[@]}" dependency:copy "-Dartifact=org.apache.hadoop:hadoop-hdfs:$version:jar:tests" \
  "-DoutputDirectory=$work/jars" >&2

(cd "$work/jars" && sha256sum -- * | sort -k2) > "$work/SHA256SUMS"
if [[ $pin -eq 1 ]]; then
  cp "$work/SHA256SUMS" "$here/SHA256SUMS"
  inputs=$(cd "$here" && cat pom.xml SHA256SUMS build.sh bin/hadoop etc/log4j.properties | sha256sum | cut -c1-8)
  name=hadoop-$version-maven-$inputs
  archive=$out/$name.tar.gz
elif ! diff -q "$here/SHA256SUMS" "$work/SHA256SUMS" >/dev/null 2>&1; then
  echo "hadoop runtime: the resolved jars differ from $here/SHA256SUMS ($(diff "$here/SHA256SUMS" "$work/SHA256SUMS" | grep -c '^[<>]') lines): check them, then rerun with --pin" >&2
  exit 1
fi

root=$work/$name
share=$root/share/hadoop
mkdir -p "$root/bin" "$root/etc/hadoop" "$share"/{common/lib,hdfs,yarn,mapreduce}
for jar in "$work"/jars/*.jar; do
  base=$(basename "$jar")
  case $base in
    "hadoop-hdfs-$version-tests.jar") unzip -q "$jar" 'webapps/*' -d "$share/hdfs" ;;
    hadoop-hdfs*-"$version".jar) cp "$jar" "$share/hdfs/" ;;
    hadoop-yarn*-"$version".jar) cp "$jar" "$share/yarn/" ;;
    hadoop-mapreduce*-"$version".jar) cp "$jar" "$share/mapreduce/" ;;
    hadoop-*-"$version".jar) cp "$jar" "$share/common/" ;;
    *) cp "$jar" "$share/common/lib/" ;;
  esac
done
install -m 0755 "$here/bin/hadoop" "$root/bin/hadoop"
for prog in hdfs yarn mapred; do ln -s hadoop "$root/bin/$prog"; done
install -m 0644 "$here/etc/log4j.properties" "$root/etc/hadoop/log4j.properties"
{
  echo "Hadoop $version runtime assembled by scalelab (roles/hadoop/files/dist/build.sh) from Maven Central."
  echo "Not an Apache release: bin/ holds scalelab's launcher, not Apache's shell scripts."
  echo "Jars (sha256):"
  cat "$work/SHA256SUMS"
} > "$root/BUILD-INFO.txt"
tar -C "$work" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 -czf "$work/out.tar.gz" "$name"
mv "$work/out.tar.gz" "$archive"
echo "built $archive in $((SECONDS - start)) s" >&2
echo "$archive"
