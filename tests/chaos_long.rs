//! The chaos scenarios run twenty times longer (millions of lines, minutes each). Ignored
//! by default: `cargo test --release --test chaos_long -- --ignored --test-threads 1`.

mod support;

use support::chaos;

#[test]
#[ignore = "long: run with --ignored"]
fn disk_buffer_keeps_lines_whose_files_kubelet_deleted_during_an_outage() {
    chaos::disk_buffer_keeps_lines_whose_files_kubelet_deleted_during_an_outage(20);
}

#[test]
#[ignore = "long: run with --ignored"]
fn kill_9_while_spooling_then_the_files_vanish_and_the_buffer_still_delivers() {
    chaos::kill_9_while_spooling_then_the_files_vanish_and_the_buffer_still_delivers(20);
}

#[test]
#[ignore = "long: run with --ignored"]
fn kill_9_at_random_points_under_load_loses_and_repeats_nothing() {
    chaos::kill_9_at_random_points_under_load_loses_and_repeats_nothing(20);
}

#[test]
#[ignore = "long: run with --ignored"]
fn kill_9_at_random_points_with_the_disk_buffer_loses_and_repeats_nothing() {
    chaos::kill_9_at_random_points_with_the_disk_buffer_loses_and_repeats_nothing(20);
}

#[test]
#[ignore = "long: run with --ignored"]
fn throttling_by_items_and_whole_requests_loses_and_repeats_nothing() {
    chaos::throttling_by_items_and_whole_requests_loses_and_repeats_nothing(20);
}

#[test]
#[ignore = "long: run with --ignored"]
fn a_rotation_every_mebibyte_at_a_high_rate_loses_and_repeats_nothing() {
    chaos::a_rotation_every_mebibyte_at_a_high_rate_loses_and_repeats_nothing(20);
}

#[test]
#[ignore = "long: run with --ignored"]
fn copytruncate_loses_nothing_the_copy_holds_what_was_not_read() {
    chaos::copytruncate_loses_nothing_the_copy_holds_what_was_not_read(20);
}

#[test]
#[ignore = "long: run with --ignored"]
fn five_hundred_containers_at_once_lose_and_repeat_nothing() {
    chaos::five_hundred_containers_at_once_lose_and_repeat_nothing(20);
}

#[test]
#[ignore = "long: run with --ignored"]
fn an_unwritable_state_directory_is_reported_shipping_goes_on_and_the_write_is_retried() {
    chaos::an_unwritable_state_directory_is_reported_shipping_goes_on_and_the_write_is_retried(20);
}

#[test]
#[ignore = "long: run with --ignored"]
fn the_kubernetes_api_down_and_its_watch_history_expired_lose_no_line_and_no_metadata() {
    chaos::the_kubernetes_api_down_and_its_watch_history_expired_lose_no_line_and_no_metadata(20);
}

#[test]
#[ignore = "long: run with --ignored"]
fn sigterm_during_an_outage_with_the_disk_buffer_stops_cleanly_and_delivers_after_restart() {
    chaos::sigterm_during_an_outage_with_the_disk_buffer_stops_cleanly_and_delivers_after_restart(
        20,
    );
}

#[test]
#[ignore = "long: run with --ignored"]
fn a_cluster_slower_than_the_writers_keeps_memory_bounded_and_is_caught_up_after() {
    chaos::a_cluster_slower_than_the_writers_keeps_memory_bounded_and_is_caught_up_after(20);
}

#[test]
#[ignore = "long: run with --ignored"]
fn a_cluster_with_less_write_capacity_than_the_writers_gets_every_line_once_with_few_resends() {
    chaos::a_cluster_with_less_write_capacity_than_the_writers_gets_every_line_once_with_few_resends(20);
}

#[test]
#[ignore = "long: run with --ignored"]
fn a_kubelet_rotation_storm_under_the_default_rescan_interval_loses_and_repeats_nothing() {
    chaos::a_kubelet_rotation_storm_under_the_default_rescan_interval_loses_and_repeats_nothing(20);
}

#[test]
#[ignore = "long: run with --ignored"]
fn a_docker_numbered_rotation_storm_loses_and_repeats_nothing() {
    chaos::a_docker_numbered_rotation_storm_loses_and_repeats_nothing(20);
}

#[test]
#[ignore = "long: run with --ignored"]
fn generations_compressed_while_the_agent_was_frozen_are_read_from_their_gz() {
    chaos::generations_compressed_while_the_agent_was_frozen_are_read_from_their_gz(20);
}

#[test]
#[ignore = "long: run with --ignored"]
fn kill_9_in_a_rotation_storm_reads_on_from_the_compressed_generation() {
    chaos::kill_9_in_a_rotation_storm_reads_on_from_the_compressed_generation(20);
}

#[test]
#[ignore = "long: run with --ignored"]
fn kill_9_then_a_rollover_then_a_restart_indexes_every_line_once() {
    chaos::kill_9_then_a_rollover_then_a_restart_indexes_every_line_once(20);
}

#[test]
#[ignore = "long: run with --ignored"]
fn kill_9_then_a_rollover_with_the_disk_buffer_indexes_every_line_once() {
    chaos::kill_9_then_a_rollover_with_the_disk_buffer_indexes_every_line_once(20);
}
