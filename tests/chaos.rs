//! Faults a node sees, against the whole agent process: kill -9 at random points, the
//! cluster away while kubelet rotates and deletes files, throttling, fast rotation, many
//! files, an unwritable state directory. Every line carries a sequence number, and each
//! test counts exactly what is missing and what arrived twice.

mod support;

use support::chaos;

#[test]
fn disk_buffer_keeps_lines_whose_files_kubelet_deleted_during_an_outage() {
    chaos::disk_buffer_keeps_lines_whose_files_kubelet_deleted_during_an_outage(1);
}

#[test]
fn kill_9_while_spooling_then_the_files_vanish_and_the_buffer_still_delivers() {
    chaos::kill_9_while_spooling_then_the_files_vanish_and_the_buffer_still_delivers(1);
}

#[test]
fn kill_9_at_random_points_under_load_loses_and_repeats_nothing() {
    chaos::kill_9_at_random_points_under_load_loses_and_repeats_nothing(1);
}

#[test]
fn kill_9_at_random_points_with_the_disk_buffer_loses_and_repeats_nothing() {
    chaos::kill_9_at_random_points_with_the_disk_buffer_loses_and_repeats_nothing(1);
}

#[test]
fn throttling_by_items_and_whole_requests_loses_and_repeats_nothing() {
    chaos::throttling_by_items_and_whole_requests_loses_and_repeats_nothing(1);
}

#[test]
fn a_rotation_every_mebibyte_at_a_high_rate_loses_and_repeats_nothing() {
    chaos::a_rotation_every_mebibyte_at_a_high_rate_loses_and_repeats_nothing(1);
}

#[test]
fn copytruncate_loses_nothing_the_copy_holds_what_was_not_read() {
    chaos::copytruncate_loses_nothing_the_copy_holds_what_was_not_read(1);
}

#[test]
fn five_hundred_containers_at_once_lose_and_repeat_nothing() {
    chaos::five_hundred_containers_at_once_lose_and_repeat_nothing(1);
}

#[test]
fn an_unwritable_state_directory_is_reported_shipping_goes_on_and_the_write_is_retried() {
    chaos::an_unwritable_state_directory_is_reported_shipping_goes_on_and_the_write_is_retried(1);
}

#[test]
fn the_kubernetes_api_down_and_its_watch_history_expired_lose_no_line_and_no_metadata() {
    chaos::the_kubernetes_api_down_and_its_watch_history_expired_lose_no_line_and_no_metadata(1);
}

#[test]
fn sigterm_during_an_outage_with_the_disk_buffer_stops_cleanly_and_delivers_after_restart() {
    chaos::sigterm_during_an_outage_with_the_disk_buffer_stops_cleanly_and_delivers_after_restart(
        1,
    );
}

#[test]
fn a_cluster_slower_than_the_writers_keeps_memory_bounded_and_is_caught_up_after() {
    chaos::a_cluster_slower_than_the_writers_keeps_memory_bounded_and_is_caught_up_after(1);
}

#[test]
fn a_full_state_disk_is_reported_shipping_goes_on_and_the_write_is_retried() {
    chaos::a_full_state_disk_is_reported_shipping_goes_on_and_the_write_is_retried(1);
}

#[test]
fn a_cluster_with_less_write_capacity_than_the_writers_gets_every_line_once_with_few_resends() {
    chaos::a_cluster_with_less_write_capacity_than_the_writers_gets_every_line_once_with_few_resends(1);
}

#[test]
fn the_end_of_an_outage_is_found_by_the_probe_not_by_waiting_out_the_backoff() {
    chaos::the_end_of_an_outage_is_found_by_the_probe_not_by_waiting_out_the_backoff(1);
}

#[test]
fn a_kubelet_rotation_storm_under_the_default_rescan_interval_loses_and_repeats_nothing() {
    chaos::a_kubelet_rotation_storm_under_the_default_rescan_interval_loses_and_repeats_nothing(1);
}

#[test]
fn a_docker_numbered_rotation_storm_loses_and_repeats_nothing() {
    chaos::a_docker_numbered_rotation_storm_loses_and_repeats_nothing(1);
}

#[test]
fn generations_compressed_while_the_agent_was_frozen_are_read_from_their_gz() {
    chaos::generations_compressed_while_the_agent_was_frozen_are_read_from_their_gz(1);
}

#[test]
fn kill_9_in_a_rotation_storm_reads_on_from_the_compressed_generation() {
    chaos::kill_9_in_a_rotation_storm_reads_on_from_the_compressed_generation(1);
}

#[test]
fn kill_9_then_a_rollover_then_a_restart_indexes_every_line_once() {
    chaos::kill_9_then_a_rollover_then_a_restart_indexes_every_line_once(1);
}

#[test]
fn kill_9_then_a_rollover_with_the_disk_buffer_indexes_every_line_once() {
    chaos::kill_9_then_a_rollover_with_the_disk_buffer_indexes_every_line_once(1);
}

#[test]
fn a_crash_with_a_backlog_looks_up_only_what_was_reserved() {
    chaos::a_crash_with_a_backlog_looks_up_only_what_was_reserved(1);
}
