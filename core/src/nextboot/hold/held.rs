//! The hold's bookkeeping: which unit each held flow belongs to, what waits
//! in the queue for it, and which pids it needs; decided without a kernel.

use std::collections::{BTreeSet, HashMap};

use anyhow::{Context, Result, bail};

use crate::manifest::{Manifest, UnitSnapshot};
use crate::netqueue::{Flow, QueuedPacket, Verdict};

#[derive(Debug)]
struct HeldUnit {
    name: String,
    index: usize,
    pids: Vec<i32>,
    /// This unit's packets waiting in the queue (id and flow), oldest first.
    queued: Vec<(u32, Flow)>,
    released: bool,
}

/// Which units each held connection belongs to, and what is waiting for it.
///
/// A flow may belong to two units: a connection over loopback between two
/// checkpointed units (a proxy and its backend) is in both units' sets, in
/// both directions (CRIU locks both). Its packets are held until every unit
/// listing the flow is released, since until then one end may have no
/// socket, and a packet accepted there draws a reset that kills the
/// connection for the end restored first.
#[derive(Debug)]
pub struct HeldUnits {
    units: Vec<HeldUnit>,
    /// The units (manifest indexes, ascending) listing each flow.
    by_flow: HashMap<Flow, Vec<usize>>,
}

/// What to do with a packet that just arrived in the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// Keep it until its unit is released.
    Held,
    /// Decide now.
    Now(Verdict),
}

/// What releasing a unit takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Release {
    /// The unit's index in the manifest (its sets).
    pub index: usize,
    /// The queued packets, oldest first, and the verdict for them.
    pub packets: Vec<u32>,
    pub verdict: Verdict,
}

impl HeldUnits {
    /// The units of `manifest`, in its order (the set index), holding
    /// `flows[i]` for unit `i`. Units in `done` (restored or cold-started
    /// earlier in this boot) are released already.
    pub fn new(manifest: &Manifest, flows: &[Vec<Flow>], done: &[String]) -> Self {
        let mut by_flow: HashMap<Flow, Vec<usize>> = HashMap::new();
        let units = manifest
            .units
            .iter()
            .enumerate()
            .map(|(index, unit)| {
                let released = done.contains(&unit.unit);
                if !released {
                    for flow in flows.get(index).into_iter().flatten() {
                        let owners = by_flow.entry(*flow).or_default();
                        if !owners.contains(&index) {
                            owners.push(index);
                        }
                    }
                }
                HeldUnit {
                    name: unit.unit.clone(),
                    index,
                    pids: needed_pids(unit),
                    queued: Vec::new(),
                    released,
                }
            })
            .collect();
        HeldUnits { units, by_flow }
    }

    /// A packet from the queue.
    pub fn arrived(&mut self, packet: &QueuedPacket) -> Arrival {
        let Some(flow) = packet.flow else {
            // Only our rules feed this queue, so an unreadable packet is
            // one of ours: let TCP retransmit it rather than draw a reset.
            return Arrival::Now(Verdict::Drop);
        };
        match self.holder_of(&flow, None) {
            Some(index) => {
                self.units[index].queued.push((packet.id, flow));
                Arrival::Held
            }
            // Queued just before the last of its units was released (the
            // sockets are back), or not one of our flows: not ours to hold.
            None => Arrival::Now(Verdict::Accept),
        }
    }

    /// The first unit still held that lists `flow`, other than `except`.
    fn holder_of(&self, flow: &Flow, except: Option<usize>) -> Option<usize> {
        self.by_flow.get(flow)?.iter().copied().find(|&index| {
            Some(index) != except && self.units.get(index).is_some_and(|u| !u.released)
        })
    }

    /// The pids to free for `unit`.
    pub fn pids_of(&self, unit: &str) -> Result<Vec<i32>> {
        Ok(self.unit(unit)?.pids.clone())
    }

    /// Releases `unit`; an error for an unknown or already released unit.
    pub fn release(&mut self, unit: &str, verdict: Verdict) -> Result<Release> {
        let index = self
            .units
            .iter()
            .position(|u| u.name == unit)
            .with_context(|| format!("{unit} is not held"))?;
        if self.units[index].released {
            bail!("{unit} was already released");
        }
        self.units[index].released = true;
        // A packet whose flow another held unit lists too (the other end of a
        // loopback connection) waits for that unit instead.
        let mut packets = Vec::new();
        for (id, flow) in std::mem::take(&mut self.units[index].queued) {
            match self.holder_of(&flow, Some(index)) {
                Some(other) => self.units[other].queued.push((id, flow)),
                None => packets.push(id),
            }
        }
        Ok(Release {
            index: self.units[index].index,
            packets,
            verdict,
        })
    }

    /// The manifest index of `unit`.
    pub(super) fn index_of(&self, unit: &str) -> Result<usize> {
        Ok(self.unit(unit)?.index)
    }

    /// Whether `unit` is held (known and not released).
    pub fn holds(&self, unit: &str) -> bool {
        self.units.iter().any(|u| u.name == unit && !u.released)
    }

    /// Units not released yet.
    pub fn remaining(&self) -> Vec<String> {
        self.units
            .iter()
            .filter(|u| !u.released)
            .map(|u| u.name.clone())
            .collect()
    }

    fn unit(&self, unit: &str) -> Result<&HeldUnit> {
        self.units
            .iter()
            .find(|u| u.name == unit)
            .with_context(|| format!("{unit} is not held"))
    }
}

/// Every pid and thread id CRIU will give the unit's processes.
pub fn needed_pids(unit: &UnitSnapshot) -> Vec<i32> {
    let set: BTreeSet<i32> = unit
        .pids
        .iter()
        .chain(&unit.thread_ids)
        .copied()
        .filter(|&p| p > 0)
        .collect();
    set.into_iter().collect()
}
