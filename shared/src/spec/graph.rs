//! A job's tasks as a graph (ARCHITECTURE.md, Flows): which tasks each one runs after, which run
//! after it, what starts together (levels), cycles (named in order, `a -> b -> c -> a`), what
//! a task sees the results of (its ancestors), and the order of reverts (a task only after every
//! task that depends on it, directly or not).
//!
//! A linear job is the graph where each task runs after the one before it: one engine walks
//! both. Tasks are numbered by their index in [`JobSpec::tasks`]; a parsed spec keeps its tasks
//! in a topological order (every task after the tasks it depends on), so that reverse index
//! order is always a valid revert order.

use super::{Flow, JobSpec};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// The dependency graph of a job's tasks, by index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Graph {
    /// For each task, the tasks it runs after (sorted, no duplicates).
    deps: Vec<Vec<usize>>,
    /// For each task, the tasks that run after it (sorted).
    dependants: Vec<Vec<usize>>,
}

impl Graph {
    /// The graph of `spec`: for a linear job each task after the one before it; for a graph
    /// its `after` lists (an index out of range is ignored: [`JobSpec::check`] refuses it).
    #[must_use]
    pub fn of(spec: &JobSpec) -> Self {
        let count = spec.tasks.len();
        let deps = match spec.flow {
            Flow::Linear => (0..count)
                .map(|i| i.checked_sub(1).into_iter().collect())
                .collect(),
            Flow::Graph => spec
                .tasks
                .iter()
                .map(|task| {
                    task.after
                        .iter()
                        .filter_map(|&a| usize::try_from(a).ok())
                        .filter(|&a| a < count)
                        .collect()
                })
                .collect(),
        };
        Self::from_deps(deps)
    }

    /// The graph where task `i` runs after every task of `deps[i]` (indices must be below
    /// `deps.len()`; others are dropped).
    #[must_use]
    pub fn from_deps(mut deps: Vec<Vec<usize>>) -> Self {
        let count = deps.len();
        let mut dependants = vec![Vec::new(); count];
        for (task, list) in deps.iter_mut().enumerate() {
            list.retain(|&d| d < count);
            list.sort_unstable();
            list.dedup();
            for &dep in list.iter() {
                dependants[dep].push(task);
            }
        }
        Self { deps, dependants }
    }

    /// How many tasks.
    #[must_use]
    pub fn len(&self) -> usize {
        self.deps.len()
    }

    /// Whether the graph has no task.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.deps.is_empty()
    }

    /// The tasks `task` runs after.
    #[must_use]
    pub fn deps(&self, task: usize) -> &[usize] {
        self.deps.get(task).map_or(&[], Vec::as_slice)
    }

    /// The tasks that run after `task`.
    #[must_use]
    pub fn dependants(&self, task: usize) -> &[usize] {
        self.dependants.get(task).map_or(&[], Vec::as_slice)
    }

    /// A cycle, if there is one: its tasks in the order they would run, the first repeated at
    /// the end (`[a, b, c, a]`: b after a, c after b, a after c).
    #[must_use]
    pub fn find_cycle(&self) -> Option<Vec<usize>> {
        // 0 unvisited, 1 on the current path, 2 done.
        let mut color = vec![0u8; self.len()];
        for root in 0..self.len() {
            if color[root] != 0 {
                continue;
            }
            // The path, each with the position of the next dependant to follow.
            let mut path: Vec<(usize, usize)> = vec![(root, 0)];
            color[root] = 1;
            while let Some(&mut (task, ref mut next)) = path.last_mut() {
                let Some(&child) = self.dependants[task].get(*next) else {
                    color[task] = 2;
                    path.pop();
                    continue;
                };
                *next += 1;
                match color[child] {
                    0 => {
                        color[child] = 1;
                        path.push((child, 0));
                    }
                    1 => {
                        let start = path.iter().position(|&(t, _)| t == child)?;
                        let mut cycle: Vec<usize> = path[start..].iter().map(|&(t, _)| t).collect();
                        cycle.push(child);
                        return Some(cycle);
                    }
                    _ => {}
                }
            }
        }
        None
    }

    /// A topological order (every task after the tasks it runs after), ties broken by the
    /// lower index, so that a list already in order stays as it is; `None` for a cycle.
    #[must_use]
    pub fn topo_order(&self) -> Option<Vec<usize>> {
        let mut waiting: Vec<usize> = self.deps.iter().map(Vec::len).collect();
        let mut ready: BinaryHeap<Reverse<usize>> = (0..self.len())
            .filter(|&t| waiting[t] == 0)
            .map(Reverse)
            .collect();
        let mut order = Vec::with_capacity(self.len());
        while let Some(Reverse(task)) = ready.pop() {
            order.push(task);
            for &child in &self.dependants[task] {
                waiting[child] -= 1;
                if waiting[child] == 0 {
                    ready.push(Reverse(child));
                }
            }
        }
        (order.len() == self.len()).then_some(order)
    }

    /// The tasks by level: level 0 runs after nothing, level n after something of level n - 1
    /// (what can start together when every task takes as long). Empty for a cyclic graph.
    #[must_use]
    pub fn levels(&self) -> Vec<Vec<usize>> {
        let Some(order) = self.topo_order() else {
            return Vec::new();
        };
        let mut level = vec![0usize; self.len()];
        let mut levels: Vec<Vec<usize>> = Vec::new();
        for task in order {
            let own = self.deps[task]
                .iter()
                .map(|&d| level[d] + 1)
                .max()
                .unwrap_or(0);
            level[task] = own;
            if levels.len() <= own {
                levels.resize_with(own + 1, Vec::new);
            }
            levels[own].push(task);
        }
        for tasks in &mut levels {
            tasks.sort_unstable();
        }
        levels
    }

    /// Every task `task` runs after, directly or not, nearest first (breadth first; ties by
    /// index): the tasks whose results it sees.
    #[must_use]
    pub fn ancestors(&self, task: usize) -> Vec<usize> {
        let mut seen = vec![false; self.len()];
        let mut found = Vec::new();
        let mut queue: VecDeque<usize> = self.deps(task).iter().copied().collect();
        for &d in self.deps(task) {
            seen[d] = true;
        }
        while let Some(next) = queue.pop_front() {
            found.push(next);
            for &d in &self.deps[next] {
                if !seen[d] {
                    seen[d] = true;
                    queue.push_back(d);
                }
            }
        }
        found
    }

    /// For each task of `set` (by position in `set`), the positions in `set` of the tasks that
    /// must finish reverting before it may revert: those of `set` that depend on it, directly
    /// or through tasks outside `set`. A cyclic graph gives no blockers.
    #[must_use]
    pub fn revert_blockers(&self, set: &[usize]) -> Vec<Vec<usize>> {
        let Some(order) = self.topo_order() else {
            return vec![Vec::new(); set.len()];
        };
        let words = self.len().div_ceil(64);
        // descendants[t]: every task that depends on t, directly or not, as a bit set.
        let mut descendants = vec![vec![0u64; words]; self.len()];
        for &task in order.iter().rev() {
            let mut bits = vec![0u64; words];
            for &child in &self.dependants[task] {
                bits[child / 64] |= 1 << (child % 64);
                for (word, theirs) in bits.iter_mut().zip(&descendants[child]) {
                    *word |= theirs;
                }
            }
            descendants[task] = bits;
        }
        set.iter()
            .map(|&task| {
                set.iter()
                    .enumerate()
                    .filter(|&(_, &other)| {
                        other != task
                            && descendants
                                .get(task)
                                .is_some_and(|bits| bits[other / 64] & (1 << (other % 64)) != 0)
                    })
                    .map(|(position, _)| position)
                    .collect()
            })
            .collect()
    }

    /// `tasks` in an order in which each could be reverted one at a time: every task after the
    /// tasks that depend on it (reverse topological order; ties by the higher index, so that a
    /// linear job's is last first).
    #[must_use]
    pub fn revert_order(&self, tasks: &[usize]) -> Vec<usize> {
        let Some(order) = self.topo_order() else {
            let mut plain = tasks.to_vec();
            plain.sort_unstable_by(|a, b| b.cmp(a));
            return plain;
        };
        let mut rank = vec![0usize; self.len()];
        for (position, &task) in order.iter().enumerate() {
            rank[task] = position;
        }
        let mut sorted = tasks.to_vec();
        sorted.sort_by_key(|&t| Reverse(rank.get(t).copied().unwrap_or(usize::MAX)));
        sorted
    }
}

/// The environment variable that carries task `name`'s result to the tasks after it:
/// `RESULT_` and the name upper-cased, every character but letters and digits as `_`.
#[must_use]
pub fn result_var(name: &str) -> String {
    let mut var = String::with_capacity(7 + name.len());
    var.push_str("RESULT_");
    var.extend(name.chars().map(|c| {
        if c.is_ascii_alphanumeric() {
            c.to_ascii_uppercase()
        } else {
            '_'
        }
    }));
    var
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diamond() -> Graph {
        // a=0, b=1, c=2, d=3: b and c after a, d after both.
        Graph::from_deps(vec![vec![], vec![0], vec![0], vec![1, 2]])
    }

    #[test]
    fn levels_group_what_starts_together() {
        assert_eq!(diamond().levels(), vec![vec![0], vec![1, 2], vec![3]]);
        let linear = Graph::from_deps(vec![vec![], vec![0], vec![1]]);
        assert_eq!(linear.levels(), vec![vec![0], vec![1], vec![2]]);
        let unordered = Graph::from_deps(vec![vec![], vec![], vec![]]);
        assert_eq!(unordered.levels(), vec![vec![0, 1, 2]]);
    }

    #[test]
    fn a_cycle_is_named_in_order() {
        // a after c, b after a, c after b: a -> b -> c -> a.
        let graph = Graph::from_deps(vec![vec![2], vec![0], vec![1], vec![]]);
        assert_eq!(graph.find_cycle(), Some(vec![0, 1, 2, 0]));
        assert_eq!(graph.topo_order(), None);
        assert!(graph.levels().is_empty());
        let own = Graph::from_deps(vec![vec![0]]);
        assert_eq!(own.find_cycle(), Some(vec![0, 0]));
        assert_eq!(diamond().find_cycle(), None);
    }

    #[test]
    fn topo_order_keeps_an_ordered_list_and_sorts_forward_references() {
        assert_eq!(diamond().topo_order(), Some(vec![0, 1, 2, 3]));
        // 0 after 2, 1 after nothing, 2 after 1.
        let graph = Graph::from_deps(vec![vec![2], vec![], vec![1]]);
        assert_eq!(graph.topo_order(), Some(vec![1, 2, 0]));
    }

    #[test]
    fn ancestors_are_nearest_first_and_transitive() {
        assert_eq!(diamond().ancestors(3), vec![1, 2, 0]);
        assert_eq!(diamond().ancestors(0), Vec::<usize>::new());
    }

    #[test]
    fn reverts_wait_for_every_dependant_even_through_a_task_outside_the_set() {
        let graph = diamond();
        // a waits for b and c; b and c for d.
        assert_eq!(
            graph.revert_blockers(&[0, 1, 2, 3]),
            vec![vec![1, 2, 3], vec![3], vec![3], vec![]]
        );
        // Without b and c in the set, a still waits for d.
        assert_eq!(graph.revert_blockers(&[0, 3]), vec![vec![1], vec![]]);
        assert_eq!(graph.revert_order(&[0, 1, 2, 3]), vec![3, 2, 1, 0]);
        assert_eq!(graph.revert_order(&[0, 2]), vec![2, 0]);
    }

    #[test]
    fn result_vars_are_upper_cased_with_underscores() {
        assert_eq!(result_var("build-app.v2"), "RESULT_BUILD_APP_V2");
        assert_eq!(result_var("a_b"), result_var("A-b"));
    }
}
