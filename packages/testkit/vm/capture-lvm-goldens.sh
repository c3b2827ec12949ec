#!/bin/bash
# Captures the LVM report goldens of packages/drivers/src/testdata/lvm-*.json from real LVM in the kernel VM
# (thin pools and snapshots need device-mapper), with the drivers' own field lists. Run from the repo root:
#   node_modules/.bin/tsx packages/testkit/src/kernel-vm.ts --share /tmp/goldens packages/testkit/vm/capture-lvm-goldens.sh
# then copy /tmp/goldens/lvm-*.json into packages/drivers/src/testdata/ (names are kept stable on purpose) and
# run `npx biome format --write packages/drivers/src/testdata/lvm-*.json` (the values stay LVM's).
set -euo pipefail
for m in dm-mod dm-thin-pool dm-snapshot loop; do modprobe "$m"; done
export LVM_SUPPRESS_FD_WARNINGS=1
LVS=lv_name,vg_name,lv_uuid,lv_path,lv_size,lv_attr,lv_tags,lv_time,segtype,pool_lv,origin,origin_size,data_percent,metadata_percent,lv_active,lv_device_open,lv_skip_activation
VGS=vg_name,vg_uuid,vg_size,vg_free,vg_extent_size,vg_extent_count,vg_free_count,lv_count
PVS=pv_name,vg_name,pv_uuid,pv_size,pv_free
R=(--reportformat json --units b --nosuffix)
O=${STOWAGE_VM_SHARE:-/share}
D=$(mktemp -d)
truncate -s 2G "$D/pv.img"
L=$(losetup --find --show "$D/pv.img")
mkdir -p "$D/etc"
cat >"$D/etc/lvm.conf" <<CONF
global { use_lvmpolld = 0 }
devices { filter = [ "a|^${L}\$|", "r|.*|" ] use_devicesfile = 0 obtain_device_list_from_udev = 0 }
activation { udev_sync = 0 udev_rules = 0 monitoring = 0 }
backup { backup = 0 archive = 0 }
CONF
export LVM_SYSTEM_DIR=$D/etc
q() { "$@" >/dev/null 2>&1; }
V1=vol-0190d2c4a3b87c3e9e2a41f7c05d6b11 V2=vol-0190d2c4a3b87c3e9e2a41f7c05d6b22 V3=vol-0190d2c4a3b87c3e9e2a41f7c05d6b33
S1=snap-0190d2c4a3b87c3e9e2a41f7c05d6b44 OP=op-0190d2c4a3b87c3e9e2a41f7c05d6b55
q pvcreate -y "$L"
q vgcreate vgthin "$L"
q lvcreate -y --type thin-pool -L 512M -n pool0 vgthin
q lvcreate -y -n "stowage-$V1" --addtag "stowage.vol=$V1" --addtag "stowage.op=$OP" -V 64M --thinpool vgthin/pool0
dd if=/dev/urandom of="/dev/vgthin/stowage-$V1" bs=1M count=8 oflag=direct status=none
q lvcreate -y -s -ky -n "stowage-$S1" --addtag "stowage.snap=$S1" --addtag "stowage.of=$V1" \
  --addtag "stowage.op=$OP" --addtag stowage.time=1732291200000 "vgthin/stowage-$V1"
q lvcreate -y -s -kn -n "stowage-tmp-$V2" --addtag "stowage.vol=$V2" --addtag "stowage.op=$OP" "vgthin/stowage-$S1"
q lvcreate -y -n foreign1 -V 32M --thinpool vgthin/pool0
lvs "${R[@]}" -o "$LVS" vgthin >"$O/lvm-lvs-thin.json"
vgs "${R[@]}" -o "$VGS" vgthin >"$O/lvm-vgs.json"
pvs "${R[@]}" -o "$PVS" >"$O/lvm-pvs.json"
q vgremove -f vgthin
q vgcreate vgthick "$L"
q lvcreate -y -n "stowage-$V3" --addtag "stowage.vol=$V3" --addtag "stowage.op=$OP" -L 64M vgthick
q lvcreate -y -s -l 100%ORIGIN -n "stowage-$S1" --addtag "stowage.snap=$S1" --addtag "stowage.of=$V3" \
  --addtag "stowage.op=$OP" --addtag stowage.time=1732291200000 "vgthick/stowage-$V3"
q lvcreate -y -n foreign2 -L 8M vgthick
lvs "${R[@]}" -o "$LVS" vgthick >"$O/lvm-lvs-cow.json"
q lvremove -y vgthick/foreign2 "vgthick/stowage-$S1" "vgthick/stowage-$V3"
lvs "${R[@]}" -o "$LVS" vgthick >"$O/lvm-lvs-empty.json"
q vgremove -f vgthick
q pvremove -y "$L"
losetup -d "$L"
ls -l "$O"/lvm-*.json
