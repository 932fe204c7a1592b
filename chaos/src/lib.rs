//! Chaos experiments for ZmqServices. `schedule` is the sans-IO scheduler: given a
//! ChaosSchedule, what it last ran, the guards and the time, it says what to run or skip.
//! `run` advances a run in progress; `target` says how many and which targets; `podkill`
//! deletes pods through the API.

pub mod podkill;
pub mod run;
pub mod schedule;
pub mod target;
