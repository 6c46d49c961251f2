#pragma once

// Per-(layer, KV head) eviction state of one llama_kv_cache: query capture rings, per-head masks (MASK mode),
// the callback invocation and the plan application. Public API: include/llama-kv-evict.h.

#include "llama-kv-evict.h"
#include "llama-graph.h"

#include "ggml-cpp.h"

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

struct llama_hparams;
struct llama_ubatch;
class llama_kv_cache;
class llama_kv_cache_context;
class llm_graph_input_kv_evict;

class llama_kv_evict_state {
public:
    // returns nullptr and sets err/msg when the cache cannot be evicted per head
    static std::unique_ptr<llama_kv_evict_state> create(
            llama_kv_cache & kv,
            const llama_hparams  & hparams,
            const llama_kv_evict_params & params,
            uint32_t n_seq_max,
            bool     flash_attn,
            int32_t & err,
            std::string & msg);

    // number of heads the shared KQ mask must have (1 unless MASK mode)
    uint32_t mask_n_head() const;

    // layer il is evictable: it owns K/V in this cache, or (shared) reads those of an evictable layer
    bool has_layer(int32_t il) const;
    // the evictable layer whose K/V layer il attends (il itself unless il shares another layer's KV)
    int32_t source_layer(int32_t il) const;

    // upper bound of the graph tensors the eviction adds per graph (see llama_kv_evict_graph_nodes)
    uint32_t graph_nodes() const;

    // graph: store the query rows of layer il into its ring (q_cur [d, n_head, n_tokens] F32)
    ggml_tensor * build_capture(ggml_context * ctx, ggml_tensor * q_cur, ggml_tensor * q_idxs, int32_t il, float kq_scale);

    // graph: per-head mask of layer il = kq_mask [n_kv, n_tps, n_head, ns] + bias of streams s0 .. s0 + ns - 1
    ggml_tensor * build_layer_mask(ggml_context * ctx, ggml_tensor * kq_mask, int32_t il, uint32_t s0) const;

    // input: ring rows of the ubatch tokens (dst I64 [n_tokens]); records positions of the captured rows
    void set_capture_idxs(ggml_tensor * dst, const llama_ubatch & ubatch);

    // input: llama_kv_cache::set_input_kq_mask fills one head plane [n_kv, n_tps, 1, n_stream] at mask_plane(dst,
    // plane): dst->data itself when the mask has one head, else plane (resized); replicate_mask then copies a filled
    // plane into every head of dst [n_kv, n_tps, n_head, n_stream] (nothing to do when plane is empty)
    static void * mask_plane(ggml_tensor * dst, std::vector<uint8_t> & plane);
    static void   replicate_mask(ggml_tensor * dst, const std::vector<uint8_t> & plane);

    // hooks from llama_kv_cache
    void on_cells_filled(uint32_t strm, const std::vector<uint32_t> & idxs);
    void on_seq_rm(llama_seq_id seq_id, llama_pos p0, llama_pos p1);
    void on_seq_keep(llama_seq_id seq_id);
    void on_clear();

    // llama_kv_evict_seq / llama_kv_evict_get_stats
    int32_t evict_seq(llama_seq_id seq_id);
    int32_t get_stats(llama_seq_id seq_id, llama_kv_evict_stats & out) const;

    //
    // COMPACT mode (llama-kv-evict-compact.cpp)
    //

    // true once some sequence lives in its per-head pools (attention of the evictable layers reads them for the
    // tokens of that sequence); is_seq_compact: that sequence does
    bool is_compact() const { return n_compacted > 0; }
    bool is_seq_compact(llama_seq_id seq_id) const;

    // false when llama_kv_cache must refuse an operation on the sequence (a compacted sequence, COMPACT mode);
    // seq_id < 0 stands for every sequence
    bool allow_seq_rm(llama_seq_id seq_id, llama_pos p0, llama_pos p1) const;
    bool allow_seq_edit(llama_seq_id seq_id, const char * what) const;
    // seq_cp: both sequences editable, and a sequence with evictions copied only within its stream
    bool allow_seq_cp(llama_seq_id seq_id_src, llama_seq_id seq_id_dst) const;

    // false (error logged) when a ubatch token belongs to several sequences one of which is compacted
    bool allow_ubatch(const llama_ubatch & ubatch) const;

    // per-ubatch graph inputs of the compact path; called when the graph input is built (grows the pools if
    // needed); leaves inp.compact false when no token of the ubatch belongs to a compacted sequence
    void build_compact_inputs(llm_graph_input_kv_evict & inp, ggml_context * ctx, const llama_ubatch & ubatch);
    void set_compact_inputs(llm_graph_input_kv_evict & inp, const llama_ubatch & ubatch);

    // graph: store k_cur/v_cur [d, n_head_kv, n_tokens] of the compacted sequences' tokens into their pools and
    // attend over them, one op per KV head and sequence (k_cur/v_cur nullptr: layer il shares the KV of an
    // earlier layer, whose pools it attends as they are after that layer stored the ubatch); cur_main [n_embd_head_v*n_head, n_tokens] is the usual
    // attention output for the other tokens (nullptr when every token is compacted); returns
    // [n_embd_head_v*n_head, n_tokens] like build_attn_mha
    // sinks: the layer's attention sinks [n_head] F32 (nullptr: none), one logit per query head joining the softmax
    ggml_tensor * build_attn_compact(ggml_context * ctx, ggml_cgraph * gf, llm_graph_input_kv_evict & inp,
            ggml_tensor * cur_main, ggml_tensor * q_cur, ggml_tensor * k_cur, ggml_tensor * v_cur,
            ggml_tensor * sinks, int32_t il, float kq_scale);

    ~llama_kv_evict_state();

private:
    llama_kv_evict_state(llama_kv_cache & kv, const llama_kv_evict_params & params);

    struct layer_info {
        int32_t il;
        int32_t n_head;
        int32_t n_head_kv;
        int32_t n_embd_head_k;
        int32_t n_embd_head_v;
        float   kq_scale = 0.0f; // recorded when the graph is built

        ggml_tensor * k    = nullptr; // cache K storage [n_embd_k_gqa, kv_size, n_stream]
        ggml_tensor * ring = nullptr; // F32 [n_head*d, n_seq_max*n_window + 1]
        ggml_tensor * bias = nullptr; // F16/F32 [kv_size, 1, n_head, n_stream], MASK mode only

        std::vector<uint8_t> evicted; // [n_stream][kv_size][n_head_kv]
    };

    struct ring_slot {
        llama_pos pos   = -1; // -1: empty
        int64_t   order = -1; // capture order within the sequence
    };

    // the cells of seq_id in position order
    std::vector<uint32_t> seq_cells(llama_seq_id seq_id) const;
    // the sequence has per-head evictions (either mode)
    bool is_seq_evicted(llama_seq_id seq_id) const;

    // shared by both modes: the window's ring slots in capture order (false + logged error when empty), the
    // queries of layer l as [n_head][n_window][d], the layer record, and callback + plan validation
    bool collect_window(llama_seq_id seq_id, std::vector<int32_t> & slots, std::vector<llama_pos> & q_pos) const;
    void copy_queries(size_t l, llama_seq_id seq_id, const std::vector<int32_t> & slots, std::vector<float> & out) const;
    void fill_layer_info(llama_kv_evict_layer & out, size_t l, int32_t n_win, const float * q,
            const llama_pos * q_pos, llama_kv_evict_head * heads) const;
    int32_t run_callback(llama_kv_evict_info & info,
            const std::vector<std::vector<llama_kv_evict_head>> & heads,
            const std::vector<std::vector<std::vector<int32_t>>> & keep_buf) const;

    // one llama_kv_evict_seq call, as both modes prepare it: the sequence's cells and window, the queries of every
    // layer, and per (layer, KV head) the callback's head record with its gathered keys and keep buffer
    struct evict_round {
        uint32_t               strm = 0;
        std::vector<uint32_t>  cidx;  // cells of the sequence in position order, none shared with another one
        std::vector<int32_t>   slots; // ring slots of the window in capture order
        std::vector<llama_pos> q_pos; // [n_win]
        int32_t                n_win = 0;

        std::vector<std::vector<float>>                q_buf;    // [n_layer][n_head*n_win*d]
        std::vector<std::vector<llama_kv_evict_head>>  heads;    // [n_layer][n_head_kv], filled by the mode
        std::vector<std::vector<std::vector<uint8_t>>> k_buf;    // [n_layer][n_head_kv] keys gathered when strided
        std::vector<std::vector<std::vector<int32_t>>> keep_buf; // [n_layer][n_head_kv] plan written by the callback

        bool uniform = true; // every head holds the same entries
    };
    // checks and gathers what both modes share (func and why_shared name the caller in the logged errors);
    // LLAMA_KV_EVICT_OK or the status to return
    int32_t begin_round(llama_seq_id seq_id, const char * func, const char * why_shared, evict_round & r) const;
    // once the mode has set every head's n_kv, pos, k and nb_entry: the starting plan (keep all n_kv entries), the
    // layer records, the callback and the plan validation
    int32_t call_round(llama_seq_id seq_id, evict_round & r) const;

    void set_bias(layer_info & layer, uint32_t strm, uint32_t cell, int32_t h_kv, bool evicted);

    llama_kv_cache & kv;

    llama_kv_evict_params params;

    uint32_t n_seq_max = 1;
    uint32_t n_stream  = 1;
    uint32_t kv_size   = 0;
    uint32_t n_head    = 0; // query heads (equal in every evictable layer)

    ggml_type type_bias = GGML_TYPE_F32;
    ggml_type type_v    = GGML_TYPE_F16;

    std::vector<layer_info> layers;
    std::unordered_map<int32_t, size_t> layer_index; // model layer -> layers[] (layers owning K/V)
    std::unordered_map<int32_t, size_t> shared_index; // model layer reading another layer's K/V -> layers[] of it

    ggml_context_ptr        ctx;
    ggml_backend_buffer_ptr buf;

    std::vector<std::vector<ring_slot>> rings;   // [n_seq_max][n_window]
    std::vector<int64_t>                n_captured; // [n_seq_max]
    std::vector<uint8_t>                cell_dirty; // [n_stream * kv_size]: some entry of the cell is evicted
    std::vector<uint8_t>                seq_evicted; // [n_seq_max]

    bool flash_attn = false;

    // COMPACT mode: per evictable layer, one K and one V pool, KV head h owning rows [off[h], off[h] + cap[h])
    // anonymous pages holding one layer's pools, returned to the OS when destroyed; the mapping is the requested
    // size rounded up to whole pages of the system's page size (4 KiB on x86-64, 16 KiB on Apple silicon, 4, 16 or
    // 64 KiB on ARM64 Linux), and the pools' backend buffer spans all of it
    struct pool_pages {
        void * ptr  = nullptr;
        size_t size = 0;    // bytes mapped: a multiple of the page size, >= the bytes asked for
        explicit pool_pages(size_t size);
        static size_t page_size(); // bytes, queried from the system once
        ~pool_pages();
        pool_pages(const pool_pages &) = delete;
        pool_pages & operator=(const pool_pages &) = delete;
    };

    struct pool_layer {
        ggml_tensor * k = nullptr; // type_k [n_embd_head_k, R]
        ggml_tensor * v = nullptr; // type_v [n_embd_head_v, R], or [R, n_embd_head_v] when v_trans
        bool     v_trans = false;  // V transposed (flash attention off): row e holds dimension e of all R entries,
                                   //   so each head's V^T is a strided view for the matmul, no per-ubatch copy
        std::vector<int64_t> off;  // [n_head_kv]
        std::vector<int64_t> cap;  // [n_head_kv]
        std::vector<int64_t> len;  // [n_head_kv] rows in use
        std::vector<std::vector<llama_pos>> pos; // [n_head_kv][len] positions, ascending
        // the layer's own pages, context and buffer, so that a re-pack replaces one layer at a time; the pages are
        // mapped directly (not malloc'd: freed blocks of a few MB in the middle of the heap would stay resident)
        std::unique_ptr<pool_pages> mem;
        ggml_context_ptr            ctx;
        ggml_backend_buffer_ptr     buf;
    };

    // the pools of one sequence (empty until its first compaction)
    struct seq_pools {
        bool                    compacted = false;
        std::vector<pool_layer> layers; // [n_layer]
    };

    bool internal_rm = false; // seq_rm issued by the eviction itself

    std::vector<seq_pools> seqs; // [n_seq_max]
    uint32_t n_compacted = 0;    // sequences with compacted pools

    void drop_pools(llama_seq_id seq_id);

    // allocate new pools with the given capacities and copy rows into them: src(l, h, j) -> (k row, v row) pointers
    // of the j-th entry kept; v_trans_src: V of the source is transposed (element stride vs)
    struct row_src {
        const char * k;
        const char * v;       // row start, or first element when transposed
        size_t       v_stride; // 0: contiguous row; otherwise bytes between two elements of the row
    };
    // where entry j of KV head h of a pool is (V: first element and element stride)
    static row_src pool_row(const pool_layer & pl, int32_t h, int64_t j);
    // replace the sequence's pools layer by layer with regions of cap rows holding the given rows; false when an
    // allocation fails, with partial = true when some layers were already replaced (the sequence is then unusable)
    bool realloc_pools(llama_seq_id seq_id, const std::vector<std::vector<int64_t>> & cap,
                       const std::vector<std::vector<std::vector<row_src>>> & rows,
                       const std::vector<std::vector<std::vector<llama_pos>>> & pos, bool & partial);

    int32_t evict_seq_compact(llama_seq_id seq_id);
    int32_t get_stats_compact(llama_seq_id seq_id, llama_kv_evict_stats & out) const;
};

// graph input carrying the ring rows of the ubatch's tokens
class llm_graph_input_kv_evict : public llm_graph_input_i {
public:
    explicit llm_graph_input_kv_evict(llama_kv_evict_state * state) : state(state) {}

    void set_input(const llama_ubatch * ubatch) override;
    bool can_reuse(const llm_graph_params & params) override;

    ggml_tensor * q_idxs = nullptr; // I64 [n_tokens]

    // COMPACT mode: the ubatch tokens of each compacted sequence form a group attended in that sequence's pools
    struct compact_group {
        llama_seq_id          seq_id = -1;
        std::vector<uint32_t> tokens;   // ubatch indices of the group's tokens, ascending
        ggml_tensor         * tok_idxs = nullptr; // I32 [n]: the same indices (nullptr when the group is the ubatch)
        std::vector<int64_t>              st_off;   // [n_layer] first row of (layer, group) in st_idxs
        std::vector<std::vector<int64_t>> base;     // [n_layer][n_head_kv] rows in use when the graph was built
        std::vector<ggml_tensor *>        k_st, v_st; // [n_layer] the pools after storing the group's rows (set
                                                      //   by the layer owning them, read by the layers sharing them)
        int64_t                           base_max = 0; // the largest base over layers and heads
        int64_t                           mask_off = 0; // element offset of the group's mask in masks
    };

    bool          compact  = false;   // some token of the ubatch belongs to a compacted sequence
    bool          has_main = false;   // some token does not: the usual attention runs too
    uint32_t      n_tokens = 0;
    ggml_tensor * st_idxs  = nullptr; // I64 [sum over layers and groups of n_head_kv*n]: pool row of (token, head)
    ggml_tensor * masks    = nullptr; // F16/F32 [sum over groups of (base_max + n)*n]: one mask per group, row t =
                                      //   base_max zeros (the pooled entries precede the group) then token t's
                                      //   causal row over the group; head h reads its last base[h] + n columns
    ggml_tensor * out_idxs = nullptr; // I32 [n_tokens]: row of each token in [main output | group outputs]
                                      //   (nullptr when one group is the whole ubatch)
    std::vector<compact_group> groups;

    llama_kv_evict_state * state;
};

// graph nodes the eviction adds to a graph of the context owning mem (capture, per-head masks, the compact path's
// per-KV-head attention), 0 when eviction is off; llama_context reserves them on top of its own estimate
uint32_t llama_kv_evict_graph_nodes(const llama_memory_i * mem);

// graph builders: nullptr / kq_mask unchanged when the cache has no eviction state
llm_graph_input_kv_evict * llama_kv_evict_build_input(
        llm_graph_result * res, ggml_context * ctx, const llama_ubatch & ubatch, llama_kv_evict_state * state);

// the attention of layer il in llm_graph_context::build_attn (plain and iSWA caches): with evict == nullptr or a
// layer that is not evictable, build_attn_mha(kq_mask), llama.cpp's usual attention. Otherwise the window queries
// of q [d, n_head, n_tokens] are captured and the layer's evicted entries masked (MASK mode; mctx: the cache
// context of the layer, for its first stream); in COMPACT mode the tokens of compacted sequences are attended in
// their per-head pools (k_cur/v_cur: the ubatch's keys and values), next to the usual attention for the other
// tokens or instead of it (sinks: the layer's attention sinks, nullptr when none). Returns
// [n_embd_head_v*n_head, n_tokens] like build_attn_mha.
ggml_tensor * llama_kv_evict_build_attn(
        llm_graph_input_kv_evict * evict, ggml_context * ctx, ggml_cgraph * gf, const llama_kv_cache_context * mctx,
        ggml_tensor * q, ggml_tensor * k_cur, ggml_tensor * v_cur, ggml_tensor * kq_mask, ggml_tensor * sinks,
        float kq_scale, int32_t il, const std::function<ggml_tensor * (ggml_tensor * kq_mask)> & build_attn_mha);
